"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it) opens the page with the network off, through the DevTools protocol. The page must
make no request, log no error, show every pass's verdict, and draw something (its screenshot is
not blank). Without a Chromium this test fails: it is the only check that the page works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.browser import PageLoad, find_browser, open_page, png_pixels
from surgeon.cli import main
from surgeon.errors import EXIT_VERIFY_FAILED
from tests.html_models import HOSTILE, hostile_model, recipe


def _open(page: Path) -> PageLoad:
    if find_browser() is None:
        pytest.fail("no Chromium: apt-get install chromium (.ci/run does), or set SURGEON_CHROMIUM")
    return open_page(page, width=1000, height=1400, scale=0.5)


def _not_blank(png: bytes) -> None:
    width, height, rows = png_pixels(png)
    assert (width, height) == (500, 700)
    bpp = len(rows[0]) // width
    pixels = [row[i : i + 3] for row in rows for i in range(0, len(row), bpp)]
    inked = sum(p != b"\xff\xff\xff" for p in pixels)
    assert inked / len(pixels) > 0.02, f"only {inked} of {len(pixels)} pixels are not white"
    assert len(set(pixels)) > 20  # text, badges, graph colours: not one flat colour


def test_run_page_in_headless_chromium(tmp_path: Path) -> None:
    model = hostile_model(tmp_path / "m.onnx")
    page, report = tmp_path / "run.html", tmp_path / "run.json"
    args = ["apply", str(recipe(tmp_path, fail=True)), "-i", str(model), "-o", str(tmp_path / "o.onnx"), "-q"]
    assert main([*args, "--html", str(page), "--report", str(report)]) == EXIT_VERIFY_FAILED
    loaded = _open(page)
    assert loaded.requests == []
    assert loaded.errors == []
    steps = json.loads(report.read_text())["steps"]
    assert loaded.verdicts == [s["verdict"] for s in steps] == ["proved (structural)", "proved (structural)", "FAIL"]
    for s in steps:
        assert f"passes[{s['index']}] {s['pass']} {s['verdict']}" in loaded.text
    assert HOSTILE.replace("\x1b", "\\x1b") in loaded.text  # shown as text, never run
    assert "first divergence at node" in loaded.text
    _not_blank(loaded.screenshot)


def test_index_page_sorts_in_headless_chromium(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("b", "a", "c"):
        hostile_model(zoo / f"{name}.onnx")
    index = tmp_path / "index.html"
    args = ["apply", str(recipe(tmp_path)), "-i", str(zoo / "*.onnx"), "--out-dir", str(tmp_path / "out"), "-j", "1"]
    assert main([*args, "-q", "--html", str(index)]) == 0
    loaded = open_page(index, width=1000, height=800, scale=0.5, script=SORT_BY_MODEL)
    assert loaded.requests == [] and loaded.errors == []
    assert loaded.verdicts == ["ok", "ok", "ok"]
    assert json.loads(loaded.evaluated) == [["a.onnx", "b.onnx", "c.onnx"], ["c.onnx", "b.onnx", "a.onnx"]]


SORT_BY_MODEL = """
(() => {
  const names = () => Array.from(document.querySelectorAll("tbody tr td:first-child")).map(td => td.innerText);
  const th = document.querySelector("th.sort");
  th.click();
  const first = names();
  th.click();
  return JSON.stringify([first, names()]);
})()
"""
