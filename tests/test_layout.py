"""Library vs programs: no library module imports a command-line module, the documented ``python -m`` commands run
without runpy's "found in sys.modules" warning, and each concept has one source (the key-mismatch message)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xattnres_monai"
#: the modules that ``python -m`` runs for the documented data commands: entry points that only call a program
ENTRY_POINTS = {
    "xattnres_monai.data.synapse.__main__",
    "xattnres_monai.data.images.__main__",
    "xattnres_monai.data.prepare",
    "xattnres_monai.data.phantoms",
    "xattnres_monai.data.image_phantoms",
    "xattnres_monai.__main__",
}
COMMANDS = ["synapse", "images", "prepare", "phantoms", "image_phantoms"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _is_program(name: str) -> bool:
    return name.startswith("xattnres_monai.cli") or name in ENTRY_POINTS


def test_no_library_module_imports_a_program():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if _is_program(name):
            continue
        offenders += [f"{name} imports {imported}" for imported in sorted(_imports(path)) if _is_program(imported)]
    assert not offenders, "\n".join(offenders)


def test_data_and_testing_libraries_parse_no_arguments():
    libraries = [p for folder in ("data", "testing") for p in sorted((PACKAGE / folder).rglob("*.py"))]
    users = [_module_name(p) for p in libraries if not _is_program(_module_name(p)) and "argparse" in _imports(p)]
    assert not users, users


def test_entry_points_only_call_their_program():
    for name in ENTRY_POINTS:
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        imported = _imports(path)
        assert imported and all(i.startswith("xattnres_monai.cli") for i in imported), (name, imported)


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_help_runs_without_runpy_warning(command):
    module = f"xattnres_monai.data.{command}"
    result = subprocess.run([sys.executable, "-W", "error", "-m", module, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {module}" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


def test_data_package_imports_no_torch():
    code = "import sys, xattnres_monai.data, xattnres_monai.testing; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_one_key_mismatch_formatter():
    """``missing keys`` / ``unexpected keys`` are worded in one place: networks/utils.py's format_key_mismatch."""
    writers = [
        _module_name(p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if any(w in p.read_text(encoding="utf-8") for w in ('"missing keys: ', '"unexpected keys: ', "f\"missing keys"))
    ]
    assert writers == ["xattnres_monai.networks.utils"], writers
