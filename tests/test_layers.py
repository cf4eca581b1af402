"""The package's layer contracts (pyproject.toml [tool.importlinter]) hold: no module imports a layer above its
own, and no two modules of one package import each other, directly or through others. This is `lint-imports`,
run from its Python entry point."""
import os

from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the graph is built from the package in this checkout
    status = lint_imports(config_filename=os.path.join(ROOT, "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == EXIT_STATUS_SUCCESS, capsys.readouterr().out
