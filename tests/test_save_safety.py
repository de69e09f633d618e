"""Saving never loses a byte: refused locations, collision-free tensor file names, the atomic
(model, data) pair under SIGKILL, SIGTERM cleanup, stale temporary files, permissions, and
operating-system errors as one line."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import surgeon.ir.save
from surgeon.cli import main
from surgeon.errors import EXIT_USAGE, UsageError
from surgeon.ir.model import load
from surgeon.ir.save import SavePolicy, save
from tests.conftest import write_recipe
from tests.models_external import external_locations, matmul_chain, save_external, snapshot, weights

REPO = Path(__file__).parents[1]
TMP_PREFIX = ".surgeon-tmp-"  # every temporary file surgeon writes starts so
RECIPE = """\
version: 1
model: model.onnx
output: out.onnx
verify: {{mode: "off"}}
save: {save}
passes:
  - rename-io: {{inputs: {{x: inp}}}}
"""


def _folder(tmp_path: Path, save_policy: str = "{}", layers: int = 3) -> tuple[Path, Path]:
    """model.onnx (+ model.onnx.data), recipe.yaml and notes.txt in ``tmp_path``."""
    save_external(matmul_chain(layers, 16), tmp_path / "model.onnx")
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    return tmp_path / "model.onnx", write_recipe(tmp_path, RECIPE.format(save=save_policy))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- refused locations and names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, argv_tail",
    [
        ("{location: model.onnx}", []),  # the input model
        ("{location: recipe.yaml}", []),  # the recipe
        ("{location: out.onnx}", []),  # the output model itself
        ("{location: notes.txt}", []),  # any other existing file
        ("{}", ["-o", "{folder}/recipe.yaml"]),  # the output is the recipe
        ("{}", ["-o", "{folder}/model.onnx.data"]),  # the output is the input's weights
    ],
)
def test_save_location_that_would_overwrite_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, argv_tail: list[str]
) -> None:
    _, recipe = _folder(tmp_path, policy)
    before = snapshot(tmp_path)
    assert main(["apply", str(recipe), *(a.format(folder=tmp_path) for a in argv_tail)]) == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert "refusing to overwrite" in line or "never overwrites" in line or "is the output model itself" in line, line
    assert snapshot(tmp_path) == before


def test_location_of_the_previous_output_is_replaced_atomically(tmp_path: Path) -> None:
    """The output's own previous data file may be named again: the new data goes to a fresh
    name, the model file is renamed last, then the old data file goes. Files stay two."""
    _, recipe = _folder(tmp_path, "{location: w.bin}")
    assert main(["apply", str(recipe), "-q"]) == 0
    out = tmp_path / "out.onnx"
    assert {r["location"] for r in external_locations(out).values()} == {"w.bin"}
    assert main(["apply", str(recipe), "-q"]) == 0
    (second,) = {r["location"] for r in external_locations(out).values()}
    assert re.fullmatch(r"w\.[0-9a-f]{8}\.bin", second) and not (tmp_path / "w.bin").exists()
    assert main(["apply", str(recipe), "-q"]) == 0  # and back: w.bin is free again
    assert {r["location"] for r in external_locations(out).values()} == {"w.bin"}
    assert not (tmp_path / second).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
        "notes.txt",
        "out.onnx",
        "recipe.yaml",
        "w.bin",
    ]
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(_outputs(out, x), _outputs(tmp_path / "model.onnx", x), rtol=0, atol=0)
    # an output that shared the source's weights: re-written without sharing, the source's data stays
    source_data = snapshot(tmp_path)["model.onnx.data"]
    write_recipe(tmp_path, RECIPE.format(save="{share_weights: true}"))
    assert main(["apply", str(recipe), "-q"]) == 0
    assert {r["location"] for r in external_locations(out).values()} == {"model.onnx.data"}
    assert not (tmp_path / "w.bin").exists()  # no longer referenced by the output
    write_recipe(tmp_path, RECIPE.format(save="{}"))
    assert main(["apply", str(recipe), "-q"]) == 0
    assert {r["location"] for r in external_locations(out).values()} == {"out.onnx.data"}
    assert snapshot(tmp_path)["model.onnx.data"] == source_data


def test_one_file_per_tensor_names_never_hit_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = matmul_chain(6, 16)
    names = ["model.onnx", "recipe.yaml", "notes.txt", "out.onnx", "A", "a"]
    for i, name in enumerate(names):
        proto.graph.initializer[i].name = name
        proto.graph.node[i].input[1] = name
    onnx.save(proto, str(tmp_path / "model.onnx"))
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    recipe = write_recipe(tmp_path, RECIPE.format(save="{external: always, one_file_per_tensor: true, threshold: 0}"))
    before = snapshot(tmp_path)
    assert main(["apply", str(recipe), "-q"]) == 0, capsys.readouterr().err
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before  # input, recipe and notes untouched
    files = [r["location"] for r in external_locations(tmp_path / "out.onnx").values()]
    assert len({f.lower() for f in files}) == len(names)  # unique, case-insensitively
    assert not {f.lower() for f in files} & {k.lower() for k in before} and "out.onnx" not in files
    got = weights(onnx.load(str(tmp_path / "out.onnx")))
    for name, value in weights(proto).items():
        np.testing.assert_array_equal(got[name], value)


# --- the atomic (model, data) pair under SIGKILL ---------------------------------------------------

CRASH = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from pathlib import Path
    import numpy as np
    from onnx import numpy_helper
    import surgeon.ir.save as S
    from surgeon.ir.external import tensor_values
    from surgeon.ir.model import load

    mode, root = sys.argv[1], Path(sys.argv[2])

    def run(k, folder):
        calls = [0]

        def hook(mod, name):
            real = getattr(mod, name)

            def wrapped(*args, **kwargs):
                calls[0] += 1
                if calls[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            setattr(mod, name, wrapped)

        for name in ("replace", "rename", "unlink", "fsync", "link"):
            hook(os, name)
        hook(S, "copy_range")
        out = folder / "out.onnx"
        if mode == "in-place":
            model = load(out)
            inits = model.proto.graph.initializer
            w0 = numpy_helper.from_array(tensor_values(inits[0], folder) * 2, inits[0].name)
            inits[0].CopyFrom(w0)
            order = list(reversed(inits))  # another layout: old offsets would read other tensors
            kept = [type(t)() for t in order]
            for a, b in zip(kept, order):
                a.CopyFrom(b)
            del inits[:]
            inits.extend(kept)
            S.save(model, out, changed={"w0"})
        else:
            S.save(load(folder / "src" / "new.onnx"), out)

    for k in range(1, 80):
        folder = root / f"k{k}"
        shutil.copytree(root / "template", folder)
        pid = os.fork()
        if pid == 0:
            try:
                run(k, folder)
                code = 0
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not os.WIFSIGNALED(status):
            assert os.WEXITSTATUS(status) == 0, (k, status)
            break
    """
)


@pytest.mark.parametrize("mode", ["in-place", "overwrite"])
def test_sigkill_at_any_point_of_a_save_leaves_the_old_or_the_new_model(tmp_path: Path, mode: str) -> None:
    template = tmp_path / "template"
    template.mkdir()
    old = matmul_chain(3, 16, seed=0)
    save_external(old, template / "out.onnx")
    if mode == "in-place":
        new_w = weights(old)
        new_w["w0"] = new_w["w0"] * 2
    else:
        new = matmul_chain(3, 16, seed=1)
        new.graph.initializer.reverse()  # another layout
        (template / "src").mkdir()
        save_external(new, template / "src" / "new.onnx")
        new_w = weights(new)
    old_w = weights(old)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, mode, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    expect_old = x @ old_w["w0"] @ old_w["w1"] @ old_w["w2"]
    expect_new = x @ new_w["w0"] @ new_w["w1"] @ new_w["w2"]
    seen = []
    runs = sorted(tmp_path.glob("k*"), key=lambda p: int(p.name[1:]))
    assert len(runs) >= 6  # writes, syncs, renames and the removal of the old data were all hit
    for folder in runs:
        out = folder / "out.onnx"
        onnx.load(str(out), load_external_data=True)  # onnx's loader accepts it (one hard link each)
        got = _outputs(out, x)
        if np.allclose(got, expect_old, rtol=1e-5, atol=1e-5):
            seen.append("old")
        elif np.allclose(got, expect_new, rtol=1e-5, atol=1e-5):
            seen.append("new")
        else:
            pytest.fail(f"{folder.name}: the model on disk computes neither the old nor the new outputs")
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, key=["old", "new"].index)
    final = runs[-1]
    refs = {r["location"] for r in external_locations(final / "out.onnx").values()}
    data_files = {p.name for p in final.iterdir() if p.is_file() and p.name != "out.onnx"}
    assert data_files == refs  # after a complete save the old data file is gone


# --- SIGTERM, temporary files ------------------------------------------------------------------------

SLOW = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import surgeon.ir.save as S
    from surgeon.cli import main

    marker = Path(sys.argv[1])
    real = S.copy_range

    def slow(*args):
        marker.write_text("copying")
        time.sleep(60)
        return real(*args)

    S.copy_range = slow
    sys.exit(main(sys.argv[2:]))
    """
)


def test_sigterm_during_a_save_removes_temporary_files_and_exits_143(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path, _ = _folder(work)
    (work / "out.onnx").write_bytes(b"previous output")
    before = snapshot(work)
    marker = tmp_path / "marker"
    argv = ["run", "cleanup", str(path), "-o", str(work / "out.onnx"), "--no-verify", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW, str(marker), *argv], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1]
    assert [p for p in work.iterdir() if p.name.startswith(".")]  # the save is under way: a temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert snapshot(work) == before  # no temporary file, the previous output untouched


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hour_ago = time.time() - 3700
    stale = tmp_path / f"{TMP_PREFIX}{dead.pid}-abc.tmp"
    recent = tmp_path / f"{TMP_PREFIX}{dead.pid}-def.tmp"
    alive = tmp_path / f"{TMP_PREFIX}{os.getpid()}-ghi.tmp"
    foreign = tmp_path / ".model.onnx.xyz.tmp"
    for p in (stale, recent, alive, foreign):
        p.write_bytes(b"partial")
    for p in (stale, alive, foreign):
        os.utime(p, (hour_ago, hour_ago))
    renamed: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        renamed.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save(load(matmul_chain(2, 16)), tmp_path / "m.onnx", SavePolicy(external="always"))
    assert not stale.exists() and recent.exists() and alive.exists() and foreign.exists()
    assert len(renamed) == 2 and all(n.startswith(f"{TMP_PREFIX}{os.getpid()}-") for n in renamed)


def test_written_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
            os.umask(umask)
            out = tmp_path / f"m{umask:o}.onnx"
            written = save(load(matmul_chain(2, 16)), out, SavePolicy(external="always"))
            assert len(written) == 2
            for p in written:
                assert p.stat().st_mode & 0o777 == mode, (p.name, oct(umask))
    finally:
        os.umask(old)


# --- output paths checked before the work, OS errors as one line ---------------------------------------


@pytest.mark.parametrize("command", ["run", "verify"])
def test_report_into_a_missing_folder_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path, _ = _folder(tmp_path)
    before = snapshot(tmp_path)
    report = ["--report", str(tmp_path / "nope" / "r.json")]
    if command == "run":
        code = main(["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx"), "--no-verify", *report])
    else:
        code = main(["verify", str(path), str(path), "--dims", "batch=2", "--device", "cpu", *report])
    assert code == EXIT_USAGE
    assert f"--report {tmp_path}/nope/r.json: output folder" in _one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_save_location_in_a_missing_subfolder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recipe = _folder(tmp_path, "{location: sub/w.bin}")
    before = snapshot(tmp_path)
    assert main(["apply", str(recipe)]) == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert "save.location 'sub/w.bin'" in line and "does not exist" in line
    assert snapshot(tmp_path) == before


def _enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["copy_range", "fsync"])
def test_disk_full_is_one_line_exit_3_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    path, _ = _folder(tmp_path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    before = snapshot(tmp_path)
    monkeypatch.setattr(surgeon.ir.save, "copy_range", _enospc) if target == "copy_range" else monkeypatch.setattr(
        os, "fsync", _enospc
    )
    assert main(["run", "cleanup", str(path), "-o", str(out), "--no-verify", "-q"]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path))}/out\.onnx(\.data)?: No space left on device", line), line
    assert snapshot(tmp_path) == before


def test_unwritable_output_folder_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _folder(tmp_path)
    before = snapshot(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode, **kw)
    )
    assert main(["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx"), "--no-verify"]) == EXIT_USAGE
    assert "is not writable" in _one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_permission_denied_when_creating_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _folder(tmp_path)
    before = snapshot(tmp_path)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main(["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx"), "--no-verify"]) == 3
    assert _one_error_line(capsys.readouterr().err) == f"error: {tmp_path}: Permission denied"
    assert snapshot(tmp_path) == before


def test_read_only_file_system_at_the_commit_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data file is renamed into place, then the model rename fails: the new data file (which no
    model refers to) goes, the previous output is untouched."""
    path, _ = _folder(tmp_path)
    out = tmp_path / "out.onnx"
    save_external(matmul_chain(3, 16, seed=5), out)
    before = snapshot(tmp_path)
    real_replace, calls = os.replace, []

    def second_fails(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    assert main(["run", "cleanup", str(path), "-o", str(out), "--no-verify"]) == 3
    assert _one_error_line(capsys.readouterr().err) == f"error: {out}: Read-only file system"
    assert snapshot(tmp_path) == before


def test_any_os_error_is_one_line_and_a_bug_is_exit_4(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import surgeon.ir.summary

    path = tmp_path / "m.onnx"
    onnx.save(matmul_chain(1, 4), str(path))

    def denied(model: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/file")

    monkeypatch.setattr(surgeon.ir.summary, "inspect_model", denied)
    assert main(["inspect", str(path)]) == 3
    assert _one_error_line(capsys.readouterr().err) == "error: /some/file: Permission denied"

    def bug(model: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(surgeon.ir.summary, "inspect_model", bug)
    assert main(["inspect", str(path)]) == 4
    assert (
        _one_error_line(capsys.readouterr().err)
        == "error: internal error (RuntimeError: boom); run with -v for the traceback"
    )
    assert main(["inspect", str(path), "-v"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


# --- recipe paths at their place in the recipe -------------------------------------------------------------


def test_recipe_paths_are_reported_at_their_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import surgeon

    text = "version: 1\nmodel: nothere.onnx\noutput: out/m.onnx\npasses:\n  - cleanup: {}\n"
    recipe = write_recipe(tmp_path, text)
    assert main(["apply", str(recipe)]) == EXIT_USAGE
    assert _one_error_line(capsys.readouterr().err) == f"error: {recipe}:2:8: model: nothere.onnx: no such file"
    onnx.save(matmul_chain(1, 4), str(tmp_path / "nothere.onnx"))
    assert main(["apply", str(recipe)]) == EXIT_USAGE
    assert (
        _one_error_line(capsys.readouterr().err)
        == f"error: {recipe}:3:9: output: out/m.onnx: output folder 'out' does not exist"
    )
    with pytest.raises(UsageError, match=re.escape(f"{recipe}:3:9: output: out/m.onnx")):
        surgeon.apply(recipe)
    assert main(["apply", str(recipe), "-o", str(tmp_path / "x" / "m.onnx")]) == EXIT_USAGE  # -o: the path itself
    assert f"{tmp_path}/x/m.onnx: output folder" in _one_error_line(capsys.readouterr().err)


def test_validate_reports_a_missing_model_at_its_place_in_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from surgeon.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\nmodel: nothere.onnx\npasses:\n  - cleanup: {}\n")
    assert main(["validate", str(recipe)]) == 2
    assert f"{recipe}:2:8: model: nothere.onnx: no such file" in capsys.readouterr().err
