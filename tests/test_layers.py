"""The package's layers at run time: what importing a layer loads (the import-linter contracts in
pyproject.toml check the static imports; these check the lazy faces keep their promise)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import clipimo


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", [
    "import clipimo",
    "import clipimo.cli.app; clipimo.cli.app.build_parser()",
    "import clipimo.report.builder, clipimo.report.export, clipimo.report.records",
    "import clipimo.methods.names",
])
def test_light_layers_do_not_load_torch(statement):
    loaded = _loaded_after(statement)
    assert not {"torch", "open_clip"} & loaded, statement


def test_the_library_never_loads_the_command_line():
    loaded = _loaded_after("import clipimo.api, clipimo.experiment.grid, clipimo.experiment.shift, clipimo.overlap.measure")
    assert "torch" in loaded  # the statement really loaded the heavy layers
    assert not any(m == "clipimo.cli" or m.startswith("clipimo.cli.") for m in loaded)


def test_top_level_holds_only_the_package_faces():
    """Everything else lives in a sub-package named after its job."""
    top = {p.name for p in __import__("pathlib").Path(clipimo.__file__).parent.glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "api.py", "errors.py", "version.py", "defaults.py"}


def test_public_api_names_resolve():
    for name in clipimo.__all__:
        assert getattr(clipimo, name) is not None
    assert clipimo.__version__ == __import__("clipimo.version").version.__version__
