"""The package's layer contracts (pyproject.toml [tool.importlinter]) hold: no module imports a layer above its
own, and no two modules of one package import each other, directly or through others. (`lint-imports` runs
the same check from the command line.)"""
import os

from importlinter.application.use_cases import lint_imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the graph is built from the package in this checkout
    passed = lint_imports(config_filename=os.path.join(ROOT, "pyproject.toml"), cache_dir=None, no_logo=True)
    assert passed, capsys.readouterr().out
