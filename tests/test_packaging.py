"""pyproject.toml's declarations agree with the code and the CI check: torch is a range (installing mtl_ops keeps
the user's torch) that holds the torch CI tests as the oldest; each optional import names an extra that lists
its package; the development environment pins every package of the extras the tests use."""
import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(items):
    return {Requirement(r).name.lower(): Requirement(r) for r in items}


def test_torch_is_a_lower_bound_in_the_dependencies_and_the_build():
    runtime = _requirements(PYPROJECT["project"]["dependencies"])["torch"]
    build = _requirements(PYPROJECT["build-system"]["requires"])["torch"]
    assert [s.operator for s in runtime.specifier] == [">="], runtime
    assert runtime.specifier == build.specifier


def test_the_oldest_torch_ci_tests_is_in_the_declared_range():
    script = (ROOT / ".ci" / "oldest-torch.sh").read_text()
    oldest = re.search(r"MTL_OPS_OLDEST_TORCH:-([0-9.]+)", script).group(1)
    runtime = _requirements(PYPROJECT["project"]["dependencies"])["torch"]
    assert runtime.specifier.contains(oldest)
    pinned = re.search(r"^torch==([0-9.]+)", (ROOT / "requirements-dev.txt").read_text(), re.M).group(1)
    assert runtime.specifier.contains(pinned)


def _require_calls():
    """(file, module, package, extra) of every ``require(module, package, extra, purpose)`` in mtl_ops."""
    calls = []
    for path in sorted((ROOT / "mtl_ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) >= 3:
                calls.append((path.name, *(a.value for a in node.args[:3])))
    return calls


def test_every_optional_import_names_an_extra_that_installs_it():
    extras = PYPROJECT["project"]["optional-dependencies"]
    calls = _require_calls()
    assert {c[1].split(".")[0] for c in calls} >= {"PIL", "tqdm", "timm", "torchvision", "safetensors"}
    for file, module, package, extra in calls:
        assert extra in extras, (file, module, extra)
        assert package.lower() in _requirements(extras[extra]), (file, module, package, extra)


@pytest.mark.parametrize("extra", ["train", "timm", "torchvision", "torchjd"])
def test_the_development_environment_pins_the_extras_the_tests_use(extra):
    pins = {}
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name.lower()] = requirement
    for name in _requirements(PYPROJECT["project"]["optional-dependencies"][extra]):
        assert name in pins and [s.operator for s in pins[name].specifier] == ["=="], name
