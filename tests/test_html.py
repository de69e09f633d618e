"""The HTML report and the Model Explorer node data: what the page holds, that it refers to
nothing outside itself, that model text reaches it escaped, the structural diff and its layout,
and that the files are outputs like ``--report`` (guarded)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from surgeon.cli import main
from surgeon.errors import EXIT_USAGE, EXIT_VERIFY_FAILED
from surgeon.graphdiff import Node, Sketch, diff
from surgeon.html_report import layout
from tests.html_models import HOSTILE, OUT_NAME, hostile_model, recipe

URL_ATTRS = {"src", "srcset", "href", "xlink:href", "data", "poster", "action", "formaction", "background"}
FETCHING_TAGS = {"link", "iframe", "object", "embed", "base", "frame", "audio", "video", "source", "track", "img"}
OUTSIDE = re.compile(r"@import|url\(\s*['\"]?(?!#)|\bfetch\(|XMLHttpRequest|\bimport\(|https?:|//", re.I)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.raw: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FETCHING_TAGS:
            self.found.append(f"<{tag}>")
        if tag == "meta" and any(k == "http-equiv" for k, _ in attrs):
            self.found.append("<meta http-equiv>")
        for key, value in attrs:
            value = value or ""
            if key in URL_ATTRS and not (value.startswith("#") or _page_beside(value)):
                self.found.append(f"{tag} {key}={value}")
            elif key == "style" and OUTSIDE.search(value):
                self.found.append(f"{tag} style={value}")
        self.raw = tag if tag in ("style", "script") else None

    def handle_endtag(self, tag: str) -> None:
        self.raw = None

    def handle_data(self, data: str) -> None:
        if self.raw is not None:
            self.found += [f"<{self.raw}>: {m.group()}" for m in OUTSIDE.finditer(data)]


def _page_beside(href: str) -> bool:
    """A link from an index to a model's page (or back): a relative path to an .html file."""
    return href.endswith(".html") and ":" not in href and not href.startswith("/")


def external_refs(text: str) -> list[str]:
    """Whatever in a page would fetch something outside it: a tag that loads (img, link, iframe,
    ...), a src/href/data attribute that is not a fragment of the page (or a link to a page beside
    it), an @import, url(), fetch or URL in its style or script. Model text is data, escaped, not
    markup: it is not looked at."""
    parser = _Refs()
    parser.feed(text)
    parser.close()
    return parser.found


def _apply(tmp_path: Path, fail: bool, *extra: str) -> tuple[int, Path]:
    model = hostile_model(tmp_path / "m.onnx")
    rec = recipe(tmp_path, fail=fail)
    page = tmp_path / "run.html"
    code = main(
        ["apply", str(rec), "-i", str(model), "-o", str(tmp_path / "o.onnx"), "--html", str(page), "-q", *extra]
    )
    return code, page


def test_page_is_self_contained_and_escapes_model_text(tmp_path: Path) -> None:
    code, page = _apply(tmp_path, False, "--report", str(tmp_path / "r.json"))
    assert code == 0
    text = page.read_text(encoding="utf-8")
    assert external_refs(text) == []
    assert "http" not in text
    assert "<script>alert" not in text and "<img src=x" not in text  # model text is escaped ...
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;q\\x1b[31m" in text  # ... and shown whole
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "\x1b" not in text
    assert "<script" not in text  # a run's page has no script at all
    report = json.loads((tmp_path / "r.json").read_text())
    # every pass's verdict, as the report says it, in the page's pass sections
    sections = re.findall(r'<section class="pass [a-z]+" id="pass-(\d+)" data-verdict="([^"]+)"', text)
    assert sections == [(str(s["index"]), s["verdict"]) for s in report["steps"]]
    # the structural change of each pass: rename-io renames, cleanup removes the dead node, to-fp16 adds Casts
    structures = [s["structure"] for s in report["steps"]]
    assert structures[0]["counts"]["tensors_renamed"] == 1 and structures[0]["tensors_renamed"] == [["y", OUT_NAME]]
    assert structures[1]["removed"] == ["dead"] and structures[1]["counts"]["added"] == 0
    assert structures[2]["ops_after"]["Cast"] == 2 and structures[2]["counts"]["added"] == 2
    assert text.count('<svg class="graph"') == 3
    assert 'class="node removed"' in text and 'class="node added"' in text
    # the model's identity and I/O
    assert report["models"]["before"]["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 4]}]
    assert report["models"]["after"]["outputs"][0]["name"] == OUT_NAME
    assert "N=2 (verify.dims)" in text


def test_failed_pass_plots_the_error_of_each_tensor(tmp_path: Path) -> None:
    code, page = _apply(tmp_path, True, "--node-data", str(tmp_path / "errors.json"))
    assert code == EXIT_VERIFY_FAILED
    text = page.read_text(encoding="utf-8")
    assert external_refs(text) == []
    assert '<svg class="plot"' in text and "first divergence:" in text
    assert 'data-verdict="FAIL"' in text
    data = json.loads((tmp_path / "errors.json").read_text())
    # keyed as Model Explorer's ONNX adapter keys nodes: by node name, the graph output as "[value] name"
    [results] = [g["results"] for g in data.values()]
    assert list(data) == ["g<b>"]
    assert results[HOSTILE]["value"] > 1e-9  # the first diverging node: the MatMul
    assert {HOSTILE, "relu", "add", f"[value] {OUT_NAME}"} <= set(results)
    assert results[f"[value] {OUT_NAME}"]["value"] > 1e-9


def test_node_data_loads_with_model_explorer_classes(tmp_path: Path) -> None:
    import dacite  # a dependency of ai-edge-model-explorer (in the test extra)
    from model_explorer.config import ModelExplorerConfig
    from model_explorer.node_data_builder import GraphNodeData, ModelNodeData, NodeDataResult

    code, _ = _apply(tmp_path, True, "--node-data", str(tmp_path / "errors.json"))
    assert code == EXIT_VERIFY_FAILED
    raw = json.loads((tmp_path / "errors.json").read_text())
    strict = dacite.Config(strict=True)
    data = ModelNodeData(graphsData={k: dacite.from_dict(GraphNodeData, v, config=strict) for k, v in raw.items()})
    graph = data.graphsData["g<b>"]
    assert isinstance(graph.results[HOSTILE], NodeDataResult) and graph.results[HOSTILE].value > 0
    assert [g.stop for g in graph.gradient] == [0, 1]
    config = ModelExplorerConfig()
    config.add_node_data("surgeon errors", data)
    written = json.loads(config.get_node_data(0).to_json_string())  # its own writer: the same data
    assert {k: {f: v[f] for f in ("results", "gradient")} for k, v in written.items()} == raw


def test_verify_localize_page_and_node_data(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    ref = hostile_model(tmp_path / "ref.onnx")
    proto = onnx.load(str(ref))
    b = proto.graph.initializer[1]
    b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b) + np.float32(0.5), "b"))
    cand = tmp_path / "cand.onnx"
    onnx.save(proto, str(cand))
    page, nd = tmp_path / "v.html", tmp_path / "v.json"
    code = main(
        ["verify", str(ref), str(cand), "--localize", "--dims", "N=2", "--html", str(page), "--node-data", str(nd)]
    )
    assert code == EXIT_VERIFY_FAILED
    text = page.read_text(encoding="utf-8")
    assert external_refs(text) == []
    assert "first divergence at node <code>add</code> (Add)" in text
    [results] = [g["results"] for g in json.loads(nd.read_text()).values()]
    assert results[HOSTILE]["value"] == 0 and results["add"]["value"] > 0.4


def test_outputs_are_guarded_like_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = hostile_model(tmp_path / "m.onnx")
    rec = recipe(tmp_path)
    before = model.read_bytes()
    base = ["apply", str(rec), "-i", str(model), "-o", str(tmp_path / "o.onnx"), "-q"]
    assert main([*base, "--html", str(model)]) == EXIT_USAGE
    assert "--html" in capsys.readouterr().err
    assert main([*base, "--node-data", str(rec)]) == EXIT_USAGE
    assert main([*base, "--html", str(tmp_path / "same"), "--report", str(tmp_path / "same")]) == EXIT_USAGE
    assert main([*base, "--html", str(tmp_path / "x.html"), "--node-data", str(tmp_path / "x.html")]) == EXIT_USAGE
    assert model.read_bytes() == before and not (tmp_path / "o.onnx").exists()
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "same").exists()
    ref = tmp_path / "m.onnx"
    assert main(["verify", str(ref), str(ref), "--html", str(ref)]) == EXIT_USAGE
    assert model.read_bytes() == before


def test_many_models_index_and_pages(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    hostile_model(zoo / "a.onnx")
    hostile_model(zoo / "b#<i>.onnx")
    rec = recipe(tmp_path)
    index = tmp_path / "index.html"
    args = ["apply", str(rec), "-i", str(zoo / "*.onnx"), "--out-dir", str(tmp_path / "out"), "-j", "1", "-q"]
    assert (
        main([*args, "--html", str(index), "--node-data", str(tmp_path / "n.json")]) == EXIT_USAGE
    )  # one model's file
    assert main([*args, "--html", str(index)]) == 0
    text = index.read_text(encoding="utf-8")
    assert external_refs(text) == []
    links = re.findall(r'<a href="([^"]+)">', text)
    assert links == ["out/a.report.html", "out/b%23%3Ci%3E.report.html"]
    for name in ("a", "b#<i>"):
        page = tmp_path / "out" / f"{name}.report.html"
        assert '<a href="../index.html">' in page.read_text(encoding="utf-8")
    assert text.count('<th class="sort">') == 6 and "data-key=" in text


def test_diff_names_added_removed_rewired_and_renamed() -> None:
    before = Sketch(
        (
            Node("conv", "Conv", ("x", "w"), ("c",)),
            Node("relu", "Relu", ("c",), ("r",)),
            Node("", "Identity", ("r",), ("i",)),
            Node("old_name", "Sigmoid", ("i",), ("s",)),
            Node("out", "Mul", ("s", "r"), ("y",)),
        ),
        ("x",),
        ("y",),
    )
    after = Sketch(
        (
            Node("conv", "Conv", ("x", "w"), ("c",)),
            Node("relu", "Relu", ("c",), ("r",)),
            Node("new_name", "Sigmoid", ("r",), ("s",)),  # Identity removed: rewired to read r
            Node("cast", "Cast", ("s",), ("s16",)),
            Node("out", "Mul", ("s16", "r"), ("logits",)),  # reads the Cast, output renamed
        ),
        ("x",),
        ("logits",),
    )
    d = diff(before, after)
    assert d["added"] == ["cast"]
    assert d["removed"] == ["Identity -> i"]
    assert d["rewired"] == ["new_name", "out"]
    assert d["tensors_renamed"] == [["y", "logits"]]
    assert d["counts"] == {"added": 1, "removed": 1, "rewired": 2, "renamed": 0, "tensors_renamed": 1}
    states = {n["name"]: n["state"] for n in d["region"]["nodes"]}
    assert states["cast"] == "added" and states[""] == "removed" and states["relu"] == "context"
    assert states["logits"] == "io"
    # a removed node is drawn between the nodes it sat between
    ids = {n["name"]: n["id"] for n in d["region"]["nodes"]}
    assert [ids["relu"], ids[""], "r"] in d["region"]["edges"]


def test_diff_matches_a_renamed_node_by_its_outputs() -> None:
    before = Sketch((Node("a", "Relu", ("x",), ("y",)),), ("x",), ("y",))
    after = Sketch((Node("b", "Relu", ("x",), ("y",)),), ("x",), ("y",))
    d = diff(before, after)
    assert d["renamed"] == [["a", "b"]] and d["added"] == [] and d["removed"] == []


def test_layout_layers_follow_edges_and_barycenter_uncrosses() -> None:
    ids = ["a", "b", "c", "d", "e"]
    edges = [("a", "d"), ("b", "c"), ("c", "e"), ("d", "e"), ("a", "e")]
    place = layout(ids, edges)
    for u, v in edges:
        assert place[u][0] < place[v][0]
    assert place["e"][0] == 2  # longest path a->d->e / b->c->e
    # layer 1 ordered after its producers: d (from a) and c (from b) keep a/b's order
    assert (place["d"][1] < place["c"][1]) == (place["a"][1] < place["b"][1])
    cyc = layout(["p", "q"], [("p", "q"), ("q", "p")])
    assert set(cyc) == {"p", "q"}


def test_run_one_pass_html_and_marks_from_details(tmp_path: Path) -> None:
    from surgeon.html_report import node_data, render_run

    model = hostile_model(tmp_path / "m.onnx")
    page = tmp_path / "run.html"
    assert main(["run", "cleanup", str(model), "-o", str(tmp_path / "o.onnx"), "-q", "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert external_refs(text) == []
    # a dead node dropped: proved without a run, and drawn as passing
    assert 'class="pass ok" id="pass-0" data-verdict="proved (structural)"' in text and 'class="node removed"' in text
    # what a pass marks in its report's details (nodes kept in float32) is shown, and labels the node data
    report = {"steps": [{"index": 0, "pass": "to-fp16", "verdict": "ok", "details": {"kept_float32": ["relu"]}}]}
    assert "kept_float32" in render_run(report) and "<code>relu</code>" in render_run(report)
    import onnx

    marks = node_data(report, onnx.load(str(model)))["g<b>"]["results"]
    assert marks == {"relu": {"value": 0.0, "textColor": "#1a73e8"}}


def test_source_export_is_shown() -> None:
    from surgeon.html_report import render_run

    page = render_run({"input": "source: m:f (dynamo)", "export": {"exporter": "dynamo", "ok": True, "notes": ["<n>"]}})
    assert "dynamo: ok against torch<br>&lt;n&gt;" in page and external_refs(page) == []


def test_node_data_marks_the_nodes_to_fp16_kept_not_its_log_lines(tmp_path: Path) -> None:
    """to-fp16 with a budget lists its float32 nodes as {node, op, why} and logs its rounds as
    text: the node data marks the nodes by name (before, the dict's text was the key, which
    matches no node) and no log line; the page shows each node with its op and why."""
    import onnx
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    mask = np.triu(np.full((4, 4), -3.4e38, np.float32), 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["s"], name="scores"),
            helper.make_node("Add", ["s", "mask"], ["sm"], name="masked"),
            helper.make_node("Softmax", ["sm"], ["y"], axis=-1, name="softmax"),
        ],
        "attn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [nh.from_array(np.eye(4, dtype=np.float32), "w"), nh.from_array(mask, "mask")],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(model))
    data, page, report = tmp_path / "nodes.json", tmp_path / "run.html", tmp_path / "run.json"
    args = ["run", "to-fp16", str(model), "-o", str(tmp_path / "o.onnx"), "-q", "--set", "budget={rtol: 1e-2}"]
    assert main([*args, "--node-data", str(data), "--html", str(page), "--report", str(report)]) == 0
    [step] = json.loads(report.read_text())["steps"]
    kept = {k["node"] for k in step["details"]["kept_float32"]}
    assert "masked" in kept and step["details"]["round_log"]
    [results] = [g["results"] for g in json.loads(data.read_text()).values()]
    marked = {k for k, v in results.items() if v.get("textColor")}
    assert marked == kept, results
    text = page.read_text(encoding="utf-8")
    assert "<code>masked</code> (Add): " in text and "{&#x27;node&#x27;" not in text and "{'node'" not in text
    # the step's params, as the recipe gave them, in the report and on the page
    assert step["params"]["budget"]["rtol"] == 1e-2
    assert "params: <code>" in text and "budget" in text.split("params: <code>")[1].split("</code>")[0]


def test_node_data_keys_are_the_onnx_adapters_node_ids(tmp_path: Path) -> None:
    """The model written (--force), converted by Model Explorer's ONNX adapter (model-explorer-onnx,
    in the test extra): the node data's graph id is the adapter's, and every key it marks is a
    node the adapter draws (named nodes by name, graph outputs as "[value] <name>")."""
    from model_explorer_onnx.main import ONNXAdapter

    code, _ = _apply(tmp_path, True, "--node-data", str(tmp_path / "errors.json"), "--force")
    assert code == EXIT_VERIFY_FAILED
    written = next(p for p in tmp_path.glob("*.onnx") if p.name not in ("m.onnx",))
    graphs = ONNXAdapter().convert(str(written), {})["graphs"]
    ids = {g.id: {n.id for n in g.nodes} for g in graphs}
    data = json.loads((tmp_path / "errors.json").read_text())
    [(graph_id, graph)] = data.items()
    assert graph_id in ids, (graph_id, list(ids))
    assert set(graph["results"]) <= ids[graph_id], set(graph["results"]) - ids[graph_id]
    assert any(v["value"] > 1e-9 for v in graph["results"].values())


def test_node_data_keys_unnamed_nodes_and_graphs_as_the_adapter_names_them(tmp_path: Path) -> None:
    """Exporters leave nodes unnamed; the adapter names them (onnx_ir's NameFixPass: "node",
    "node_1", ...) and keeps an unnamed graph's empty name: the node data uses the same ids, so
    the errors land on the nodes (before, keys were output tensor names the adapter never shows)."""
    import onnx
    from model_explorer_onnx.main import ONNXAdapter
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    w = nh.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["t"]),
            helper.make_node("MatMul", ["t", "w"], ["y"]),
        ],
        "",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [w],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(model))
    out, data = tmp_path / "o.onnx", tmp_path / "errors.json"
    args = ["run", "to-fp16", str(model), "-o", str(out), "--rtol", "0", "--atol", "0", "--force", "-q"]
    assert main([*args, "--node-data", str(data)]) == EXIT_VERIFY_FAILED and out.exists()
    graphs = ONNXAdapter().convert(str(out), {})["graphs"]
    ids = {g.id: {n.id for n in g.nodes} for g in graphs}
    [(graph_id, results)] = [(k, v["results"]) for k, v in json.loads(data.read_text()).items()]
    assert graph_id == "" and graph_id in ids
    assert set(results) <= ids[graph_id], (set(results), ids[graph_id])
    assert sum(1 for k in results if not k.startswith("[value]")) >= 2
