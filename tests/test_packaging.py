"""pyproject.toml's dependency sets: the serving set (what the Docker images install) covers every third-party
import of the code that runs inside TorchServe and nothing for tests, lint, training or benchmarks, and
requirements.txt (a developer's .venv) is every set with the same constraints."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SERVED_CODE = [*(ROOT / "model").glob("*.py"), *(ROOT / "handler").glob("*.py"), ROOT / "docker" / "healthcheck.py"]
"""What runs in the image: the archive's packages and the container's health check."""
OURS = {"model", "handler"}
PROVIDED_BY_SERVER = {"ts"}  # TorchServe's own worker package: the torchserve distribution
NOT_FOR_SERVING = {"pytest", "ruff", "matplotlib", "tqdm", "grpcio", "grpcio-tools", "requests",
                   "torch-model-archiver"}


def _name(requirement: str) -> str:
    return _canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])


def _canonical(distribution: str) -> str:
    """PEP 503's normal form: ``Pillow_HEIF`` and ``pillow-heif`` are one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def serving_set() -> set[str]:
    return {_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["serve"]}


def third_party_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, minus the standard library and our own packages."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - OURS - {"__future__"}


def test_the_serving_set_provides_every_import_of_the_served_code():
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for path in SERVED_CODE:
        for module in third_party_imports(path):
            provided = {_canonical(d) for d in distributions.get(module, [])}
            if not provided & serving_set():
                missing[f"{path.relative_to(ROOT)}: {module}"] = sorted(provided)
    assert not missing, f"imports the serving set does not provide (module: distributions): {missing}"


def test_the_serving_set_leaves_out_tests_lint_training_and_benchmarks():
    assert not serving_set() & NOT_FOR_SERVING


def test_requirements_txt_is_every_set_with_the_same_constraints():
    """requirements.txt and requirements-dev.txt (which includes it with ``-r``) together."""
    text = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-dev.txt").read_text()
    listed = [line.split("#")[0].strip() for line in text.splitlines() if not line.startswith("-r ")]
    sets = [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    declared = [r for group in sets for r in group if not r.startswith(f"{PROJECT['name']}[")]
    assert sorted(filter(None, listed)) == sorted(declared)


def test_exact_pins_are_the_ones_the_header_of_requirements_txt_names():
    lines = [r for r in (ROOT / "requirements.txt").read_text().splitlines() if not r.startswith("#")]
    pinned = {_name(r) for r in lines if "==" in r}
    assert pinned == {"torch", "torchvision", "timm", "torchserve", "torch-model-archiver", "openvino",
                      "pillow-heif", "grpcio-tools", "ruff"}
