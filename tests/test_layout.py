"""The drawn structure, checked in fresh interpreters: model/ imports nothing of ours, handler/ does not import
training/, nothing edits the module path, and the command lines other scripts call keep their arguments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("model", "handler", "training", "serving", "benchmarks", "web", "tests", "scripts", "kserve")


def _imported_packages(modules: list[str]) -> set[str]:
    """Our top-level packages present in ``sys.modules`` after importing ``modules`` in a fresh interpreter."""
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({OURS!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def _package_modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / package).glob("*.py")
                  if p.name != "__main__.py")


def test_model_imports_nothing_of_ours():
    assert _imported_packages(_package_modules("model")) == {"model"}


def test_handler_imports_model_and_never_training():
    assert _imported_packages(_package_modules("handler")) == {"handler", "model"}


def test_training_imports_model_and_never_handler():
    modules = [m for m in _package_modules("training") if m != "training.ray_engine"]  # needs requirements-ray.txt
    assert _imported_packages(modules) == {"training", "model"}


def test_serving_imports_model_and_handler_only():
    modules = [m for m in _package_modules("serving") if m != "serving.kserve_native"]  # needs .venv-kserve
    assert _imported_packages(modules) <= {"serving", "model", "handler"}


def _edits_module_path(tree: ast.AST) -> bool:
    """Whether the module touches ``sys.path`` (under any alias of ``sys``, or imported from it by name)."""
    aliases = {"sys"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "sys"}
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            return True
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id in aliases for node in ast.walk(tree))


def test_no_module_edits_the_module_path():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    offenders = [name for name in files.stdout.split() if (ROOT / name).is_file()
                 and _edits_module_path(ast.parse((ROOT / name).read_text()))]
    assert not offenders, f"these use sys.path (import through the packages instead): {offenders}"


@pytest.mark.parametrize("command, status, message", [
    (["bash", "scripts/build_mar.sh"], 2, "usage:"),
    (["bash", "scripts/build_mar.sh", "no/such.pth", "STORE"], 2, "no/such.pth"),
    ([sys.executable, "scripts/local_torchserve.py", "status", "--run-dir", "no/such/run"], 1, "not running"),
    ([sys.executable, "scripts/local_torchserve.py", "stop", "--run-dir", "no/such/run"], 0, "nothing to stop"),
    ([sys.executable, "kserve/layout.py", "no/such.pth", "STORAGE"], 2, "no/such.pth"),
], ids=["build_mar-usage", "build_mar-missing-checkpoint", "status", "stop", "kserve-layout"])
def test_entry_points_keep_their_command_lines(command, status, message, tmp_path):
    result = subprocess.run([*command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == status and message in output, output
    assert "Traceback" not in output
