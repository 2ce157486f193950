"""The architecture as tests: imports point down the layers (the import-linter contract in pyproject.toml), and
no code outside `methods/` names a method (callers read a method's capabilities)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reasonbudget.methods import METHODS

SRC = Path(__file__).resolve().parent.parent / "src" / "reasonbudget"
CALLERS = ["serve", "remote", "eval", "cli.py"]


def test_imports_point_down_the_layers():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed (it is a test dependency: pip install -e '.[test]')")
    done = subprocess.run([exe], cwd=SRC.parent.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Imports point down the layers KEPT" in done.stdout


def named_methods(text: str) -> list[str]:
    """Registered method names written as string literals ("plain", 'tale:...')."""
    return [n for n in METHODS if re.search(rf"[\"']{re.escape(n)}(:|[\"'])", text)]


def test_the_grep_finds_a_method_name():  # the check itself can fail
    assert named_methods('if name == "tale": ...') == ["tale"]
    assert named_methods("spec = 'particle-filter:prm=testbed'") == ["particle-filter"]
    assert named_methods("a budget-forcing baseline") == []


def test_no_method_name_outside_methods():
    hits = []
    for part in CALLERS:
        path = SRC / part
        for f in [path] if path.is_file() else sorted(path.rglob("*.py")):
            hits += [f"{f.relative_to(SRC)}: {n}" for n in named_methods(f.read_text())]
    assert not hits, hits
