"""Many models under fire: a worker killed (as the out-of-memory killer does) costs only its own
model; SIGTERM and Ctrl-C start no further model, stop the running ones and commit nothing after
the signal; a parent killed with SIGKILL takes its workers with it. Models whose verification
takes seconds (a Loop of many iterations) keep the workers busy while the test acts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


def _loop_model(iterations: int) -> onnx.ModelProto:
    """y = x + iterations, one Add per Loop iteration: onnxruntime takes ~1 s per 400k iterations."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    g = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "input.1"], ["y"], body=body, name="loop")],
        "g",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("n", TensorProto.INT64, [], [iterations])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


SLOW, FAST = 1_500_000, 10


def _zoo(tmp_path: Path, kinds: str) -> tuple[Path, str, Path]:
    """Models m0.. (s: slow, f: fast) in models/, a rename-io recipe, and the out-dir's path."""
    (tmp_path / "models").mkdir()
    for i, kind in enumerate(kinds):
        onnx.save(_loop_model(SLOW if kind == "s" else FAST), str(tmp_path / "models" / f"m{i}.onnx"))
    recipe = tmp_path / "recipe.yaml"
    # the slow models are slow to run: the rename is verified by a run, not by its structural proof
    recipe.write_text("version: 1\nverify: {prove: false}\npasses:\n  - rename-io: {inputs: {input.1: image}}\n")
    return recipe, str(tmp_path / "models" / "*.onnx"), tmp_path / "fixed"


def _start(recipe: Path, pattern: str, out: Path, *more: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "surgeon.cli", "apply", str(recipe), "-i", pattern, "--out-dir", str(out), *more]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _workers(parent: int) -> list[int]:
    """The processes running models: the forkserver's children (the parent's grandchildren)."""
    found = []
    for child in _children(parent):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in cmdline:
            found += _children(child)
    return found


def _wait_for_workers(proc: subprocess.Popen[str], count: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = _workers(proc.pid)
        if len(workers) >= count:
            time.sleep(1.0)  # past start-up: the workers are inside their models
            return workers
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{count} workers never ran")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_worker_costs_only_its_own_model(tmp_path: Path) -> None:
    recipe, pattern, out = _zoo(tmp_path, "ssff")
    proc = _start(recipe, pattern, out, "-j", "2", "-q")
    victim = _wait_for_workers(proc, 2)[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 4, err  # a bug, that model's
    reports = {p.name: json.loads(p.read_text()) for p in out.glob("*.report.json")}
    assert len(reports) == 4
    failed = {name: r for name, r in reports.items() if not r["ok"]}
    assert len(failed) == 1, reports
    (bad,) = failed.values()
    assert bad["failure_class"] == "bug" and "SIGKILL" in bad["message"]
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(
        r["planned_output"].rpartition("/")[2] for r in reports.values() if r["ok"]
    )  # every other model written


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_and_commits_nothing_after_it(tmp_path: Path, signum: int) -> None:
    recipe, pattern, out = _zoo(tmp_path, "ssss")
    proc = _start(recipe, pattern, out, "-j", "2")
    workers = _wait_for_workers(proc, 2)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # Ctrl-C: the terminal signals the whole group
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), err
    assert "interrupted: 0 outputs committed before the signal, 4 of 4 models not finished" in err
    time.sleep(0.5)
    assert not any(_alive(w) for w in workers)
    assert list(out.iterdir()) == []  # no output, no report, no temporary file


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    recipe, pattern, out = _zoo(tmp_path, "ssss")
    proc = _start(recipe, pattern, out, "-j", "2", "-q")
    workers = _wait_for_workers(proc, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "workers outlived their parent"
    time.sleep(1)
    assert not list(out.glob("*.onnx")) and not list(out.glob(".surgeon-tmp-*"))
