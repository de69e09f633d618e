"""The recipe YAML loader (surgeon.yaml12): YAML 1.2 core schema, tags, keys, limits, round trips,
and that no input makes anything but a SurgeonError escape."""

from __future__ import annotations

import ast
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.errors import RecipeError, SurgeonError
from surgeon.passes.rename_io import RenameIO
from surgeon.passes.set_metadata import SetMetadata
from surgeon.recipe import parse_recipe_text
from surgeon.yaml12 import MAX_BYTES, MAX_DEPTH, MAX_NODES, compose, dump
from tests.conftest import write_recipe

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^recipe\.yaml:\d+:\d+: [^\n]+$")


def load(text: str) -> Any:
    return compose(text, "recipe.yaml")[0]


def refused(text: str) -> list[str]:
    """The problems compose() reports for ``text``, each checked to be one located line."""
    with pytest.raises(RecipeError) as info:
        compose(text, "recipe.yaml")
    assert info.value.problems and all(LINE.match(p) for p in info.value.problems), info.value.problems
    return info.value.problems


# --- YAML 1.2 core schema ----------------------------------------------------------------------

CORE = (
    "bools: [true, True, TRUE, false, False, FALSE]\n"
    "nulls: [null, Null, NULL, ~]\n"
    "ints: [0, 010, -7, +12, 0o17, 0x1F, 0xff]\n"
    "floats: [1.0e-4, .5, 1e3, -2.5E+2, 1., .inf, -.inf, +.INF]\n"
    "strings: [off, on, yes, no, y, n, Off, YES, 1_000, 0b101, 1:20, 2001-12-14, 0o8, 0xg, <<, =, nan, .Nan, 0x, 1e, "
    "\"true\", '010']\n"
    "empty:\n"
)


def test_scalars_follow_the_yaml_1_2_core_schema() -> None:
    data = load(CORE)
    assert data["bools"] == [True, True, True, False, False, False]
    assert data["nulls"] == [None] * 4
    assert data["ints"] == [0, 10, -7, 12, 15, 31, 255] and all(type(v) is int for v in data["ints"])
    assert data["floats"] == [1e-4, 0.5, 1000.0, -250.0, 1.0, math.inf, -math.inf, math.inf]
    assert all(type(v) is float for v in data["floats"])
    assert data["strings"] == [
        "off",
        "on",
        "yes",
        "no",
        "y",
        "n",
        "Off",
        "YES",
        "1_000",
        "0b101",
        "1:20",
        "2001-12-14",
        "0o8",
        "0xg",
        "<<",
        "=",
        "nan",
        ".Nan",
        "0x",
        "1e",
        "true",
        "010",
    ]
    assert data["empty"] is None
    assert math.isnan(load("[.nan, .NaN, .NAN]")[1])


def test_verify_mode_off_is_the_string_off() -> None:
    recipe = parse_recipe_text("version: 1\nverify: {mode: off}\npasses:\n  - cleanup: {toposort: true}\n")
    assert recipe.pipeline.verify.mode == "off"


def test_readme_recipes_parse_and_validate() -> None:
    blocks = re.findall(r"^```yaml\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) >= 3
    modes = []
    for block in blocks:
        text = block if re.search(r"^version:", block, re.M) else "version: 1\n" + block  # a passes: fragment
        modes.append(parse_recipe_text(text, "README.md").pipeline.verify.mode)
    assert "off" in modes


# --- tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["!!int abc", "!!float x", "!!bool yes", "!!null x", "!!int 1_000", "!!timestamp 2001-12-14",
     "!!python/tuple [1]", "!!python/object:os.system x", "!!binary aGk=", "!foo x", "!foo [x]", "!!set {a, b}",
     "!!omap [a: 1]", "!!merge x", "!!map [1]", "!!seq {a: 1}", "!!str [a]", "!<tag:example.com,2000:x> y"],
)  # fmt: skip
def test_a_bad_tag_is_one_located_line_and_exit_2(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(refused(value)) == 1 and refused(f"a: {value}")[0].startswith("recipe.yaml:1:4: ")
    path = write_recipe(tmp_path, f"version: 1\npasses:\n  - cleanup: {{toposort: {value}}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:3:25: "), err


def test_core_tags_construct() -> None:
    data = load(
        "[!!str 1, !!int 010, !!int 0x10, !!float 1, !!bool FALSE, !!null '', !!seq [1], !!map {a: 1}, ! 010, "
        "!<tag:yaml.org,2002:int> 7]"
    )
    assert data == ["1", 10, 16, 1.0, False, None, [1], {"a": 1}, "010", 7]
    assert type(data[3]) is float
    assert "more than 4300 digits" in refused("!!int " + "1" * 5000)[0]


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["{[cleanup]: {}}", "? {a: 1}\n: x", "passes:\n  - ? [a, b]\n    : x", "a: &a [1]\n*a : x"]
)
def test_an_unhashable_key_is_one_located_line_and_exit_2(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "a mapping key must be a scalar" in refused(text)[0]
    path = write_recipe(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"error: {re.escape(str(path))}:\d+:\d+: ", err[0]), err


def test_non_string_keys_load_with_positions_and_duplicates_are_reported() -> None:
    data, positions = compose("1: x\nnull: y\n1.5: z\n010: w\nk: {true: v}\n", "recipe.yaml")
    assert data == {1: "x", None: "y", 1.5: "z", 10: "w", "k": {True: "v"}}
    assert positions[("__key__", None)] == (2, 1) and positions[(None,)] == (2, 7)
    assert positions[("__key__", 10)] == (4, 1) and positions[("k", "__key__", True)] == (5, 5)
    assert refused("010: a\n10: b\n") == ["recipe.yaml:2:1: duplicate key 10"]
    with pytest.raises(RecipeError, match=r"^<recipe>:3:5: passes\[0\]: unknown pass '10'"):
        parse_recipe_text("version: 1\npasses:\n  - 010: {}\n")


# --- limits --------------------------------------------------------------------------------------


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "version: 1\n" + "\n".join(lines) + "\npasses: []\n"


def test_billion_laughs_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    problems = refused(laughs(10))
    assert problems == [
        f"recipe.yaml:7:10: YAML document has more than {MAX_NODES} nodes (aliases expanded), the limit for recipes"
    ]
    assert main(["validate", str(write_recipe(tmp_path, laughs(10)))]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert time.perf_counter() - start < 5
    assert load(laughs(4))["l3"][8][8][8] == ["x"] * 9  # a few aliases are fine


def test_node_limit_counts_every_alias_use() -> None:
    base = "a: &a [" + ", ".join(["x"] * 999) + "]\n"
    assert len(load(base + "b: [" + ", ".join(["*a"] * 90) + "]\n")["b"]) == 90
    assert "more than 100000 nodes" in refused(base + "b: [" + ", ".join(["*a"] * 101) + "]\n")[0]


SHAPES = {
    "flow-seq": lambda n: "[" * n + "]" * n,
    "flow-map": lambda n: "{a: " * n + "}" * n,
    "block-seq": lambda n: "- " * n + "x",
    "block-map": lambda n: "".join(" " * (2 * i) + "- b:\n" for i in range(min(n, 1000))),
}


@pytest.mark.parametrize("levels", [10_000, 100_000])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_deep_nesting_is_one_located_line(levels: int, shape: str) -> None:
    assert f"nests deeper than {MAX_DEPTH} levels" in refused(SHAPES[shape](levels))[0]


def test_depth_limit_is_exact_and_counts_alias_expansion() -> None:
    assert load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))[0].startswith(f"recipe.yaml:1:{MAX_DEPTH + 1}: ")
    inner = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert load(f"a: &a {inner}\nb: *a\n")  # the root mapping, then the alias target: exactly the limit
    assert refused(f"a: &a {inner}\nb: [*a]\n")[0].startswith("recipe.yaml:2:5: YAML nests deeper")


def test_recursive_alias_is_refused() -> None:
    assert refused("a: &a [1, *a]\n") == [
        "recipe.yaml:1:11: alias *a is used inside the node it names (a recursive alias)"
    ]
    assert "recursive alias" in refused("&m {k: *m}\n")[0]


def test_text_size_is_bounded() -> None:
    assert (
        refused("a: b\n" + " " * MAX_BYTES)[0]
        == f"recipe.yaml:1:1: recipe is {MAX_BYTES + 5} bytes, more than the 16 MiB limit"
    )


def test_unreadable_characters_are_located() -> None:
    assert refused("version: 1\npasses: [a\x00]\n") == [
        "recipe.yaml:2:11: YAML syntax error: unacceptable character #x0000: special characters are not allowed"
    ]


# --- dumping ---------------------------------------------------------------------------------------


def test_what_surgeon_dumps_reads_back_the_same() -> None:
    from surgeon.pipeline import _dump_recipe
    from surgeon.yaml12 import dump

    tricky = ["08", "1e3", "0o17", "off", "010", "yes", "~", "", "1_000", "2001-12-14", "null", ".5", "+1"]
    p = Pipeline(
        [
            RenameIO(inputs={s: f"in{i}" for i, s in enumerate(tricky)}),
            SetMetadata(producer_version="08", doc_string="1e3", metadata_props={"0o17": "off"}),
        ],
        verify={"mode": "off", "dims": {"batch": 2}},
    )
    text = dump(p.to_recipe())
    assert "'08'" in text and "'1e3'" in text and "'off'" in text
    assert parse_recipe_text(text).pipeline.to_recipe() == p.to_recipe()
    assert yaml.safe_load(text) == p.to_recipe()
    provenance = _dump_recipe(p.to_recipe())  # what a Python-built pipeline records in its output
    assert parse_recipe_text(provenance).pipeline.to_recipe() == p.to_recipe()


# --- properties ----------------------------------------------------------------------------------

TOKENS = ["[", "]", "{", "}", ":", ": ", "-", "- ", "&a ", "*a", "&b", "*b", "!", "!!", "!!int ", "!!str ", "!foo ",
          "!!python/tuple ", "!!set ", "?", "? ",
          "|", ">", "#", "'", '"', "\n", "\n  ", " ", ",", "%YAML 1.2\n", "---\n", "...\n", "<<", "\\", "\t", "\x00",
          "version", "passes", "cleanup", "verify", "mode", "off", "1", "010", "0x1F", ".inf", "null", "~",
          "true", "yes", "x"]  # fmt: skip
yaml_ish = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
TRICKY = [
    "08",
    "1e3",
    "0o17",
    "off",
    "010",
    "yes",
    "1_000",
    "1:20",
    ".5",
    "+1",
    "~",
    "Null",
    "",
    "<<",
    "=",
    "2001-12-14",
    ".NaN",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from(TRICKY),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
data = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


def only_surgeon_errors(text: str) -> None:
    try:
        parse_recipe_text(text, "recipe.yaml")
    except SurgeonError:
        pass
    try:
        compose(text, "recipe.yaml")
    except RecipeError as exc:
        assert all(LINE.match(p) for p in exc.problems), exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_ish)
def test_random_yaml_ish_text_raises_only_surgeon_errors(text: str) -> None:
    only_surgeon_errors(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data)
def test_random_dumped_data_raises_only_surgeon_errors_and_round_trips(value: Any) -> None:
    only_surgeon_errors(yaml.safe_dump(value))
    only_surgeon_errors(yaml.safe_dump({"version": 1, "passes": [{"cleanup": value}], "verify": value}))
    assert load(dump(value)) == value


def test_the_loader_imports_no_heavy_dependencies() -> None:
    tree = ast.parse((ROOT / "surgeon" / "yaml12.py").read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert {
        m for m in modules if m and m.split(".")[0] not in ("__future__", "math", "re", "collections", "typing", "yaml")
    } == {"surgeon.errors"}


def test_an_oversized_recipe_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from surgeon.recipe import load_recipe

    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk used
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(RecipeError, match="more than the 16 MiB limit"):
        load_recipe(path)


def test_set_values_are_yaml_1_2_too(tmp_path: Path) -> None:
    """`--set` values read as recipes do: an input renamed to 'off' is named 'off', not 'False'."""
    import onnx
    from onnx import parser

    from surgeon.cli import main

    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(
        parser.parse_model(
            '<ir_version: 8, opset_import: ["" : 17]> g (float[1,4] x) => (float[1,4] y) { y = Relu(x) }'
        ),
        src,
    )
    assert (
        main(["run", "rename-io", str(src), "-o", str(out), "-q", "--set", "inputs={x: off}", "--set", "outputs.y=010"])
        == 0
    )
    graph = onnx.load(out).graph
    assert [i.name for i in graph.input] == ["off"] and [o.name for o in graph.output] == ["010"]
