"""Meta-test over the pass registry: every pass is documented, tested and used in a recipe."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from surgeon.errors import UsageError
from surgeon.pass_api import Pass, PassParams, get_pass, register_pass, registry

ROOT = Path(__file__).resolve().parents[1]


def _recipe_passes() -> set[str]:
    used: set[str] = set()
    for path in (ROOT / "recipes").glob("*.yaml"):
        for step in yaml.safe_load(path.read_text()).get("passes", []):
            used.update(k for k in step if k not in ("verify", "name"))
    return used


@pytest.mark.parametrize("name", sorted(registry()))
def test_pass_is_documented_tested_and_in_a_recipe(name: str) -> None:
    cls = registry()[name]
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name)
    assert cls.summary(), f"{name}: no docstring"
    assert cls.summary().endswith("."), f"{name}: first docstring line should be a sentence"
    for fname, fld in cls.Params.model_fields.items():
        assert fld.description, f"{name}.{fname} has no description"
    assert cls.Params.model_config.get("extra") == "forbid"
    module = inspect.getmodule(cls)
    assert module is not None and module.__name__.startswith("surgeon.passes.")
    test_file = ROOT / "tests" / "passes" / f"test_{module.__name__.rsplit('.', 1)[1]}.py"
    assert test_file.is_file(), f"{name}: missing {test_file.relative_to(ROOT)}"
    assert name in _recipe_passes(), f"{name}: not used by any recipe in recipes/"


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_pass("rename-io")
        class Other(Pass):
            """Another."""

    with pytest.raises(ValueError, match="not kebab-case"):
        register_pass("Bad_Name")


def test_unknown_pass_suggests() -> None:
    with pytest.raises(UsageError, match="did you mean 'rename-io'"):
        get_pass("rename-oi")


def test_third_party_entry_point(tmp_path: Path) -> None:
    """A package that declares a `surgeon.passes` entry point is registered on load."""
    pkg = tmp_path / "site"
    (pkg / "myplugin").mkdir(parents=True)
    (pkg / "myplugin" / "__init__.py").write_text(
        "from surgeon.pass_api import Pass, PassResult, register_pass\n"
        "@register_pass('my-noop')\n"
        "class MyNoop(Pass):\n"
        "    '''Do nothing, from a plugin.'''\n"
        "    def run(self, model):\n"
        "        return PassResult(False)\n"
    )
    dist = pkg / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[surgeon.passes]\nmy-noop = myplugin\n")
    code = "from surgeon.pass_api import registry; print('my-noop' in registry())"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(pkg), "PATH": ""}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_params_are_validated_types() -> None:
    assert issubclass(get_pass("rename-io").Params, PassParams)
