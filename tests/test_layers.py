"""The package's imports go one way down its layers, and the benchmark harness uses public names only."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "comtip_sc"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Lower numbers are lower layers; a module may import from its own layer or below.
LAYERS = {"core": 0, "io": 1, "pp": 1, "datasets": 1, "model": 2, "train": 3, "tl": 4, "pl": 5, "cli": 5}
#: Package-root modules above the core: the command line and what only it uses.
TOP_LEVEL = {
    "cli.py": "cli",
    "_cli_commands.py": "cli",
    "_cli_io.py": "cli",
    "_demo.py": "cli",
    "_demo_figure.py": "cli",
    "__init__.py": "cli",
}


def _layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        return TOP_LEVEL.get(rel.name, "core")
    return rel.parts[0]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted module inside comtip_sc)`` of every import, module-level or inside a function."""
    package = list(path.relative_to(SRC).parent.parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("comtip_sc"):
                mod = node.module.removeprefix("comtip_sc").lstrip(".")
            else:
                continue
            if node.module is None:  # from . import x: x is a module of that package
                out.extend((node.lineno, f"{mod}.{a.name}".strip(".")) for a in node.names)
            else:
                out.append((node.lineno, mod))
    return out


def _target_layer(module: str) -> str:
    first = module.split(".")[0]
    if first in LAYERS:
        return first
    return TOP_LEVEL.get(f"{first}.py", "core")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers(path):
    here = _layer_of(path)
    upward = [
        f"line {line}: {mod} ({_target_layer(mod)})"
        for line, mod in _imported_modules(path)
        if mod and LAYERS[_target_layer(mod)] > LAYERS[here]
    ]
    assert not upward, f"{path.relative_to(SRC)} ({here}) imports from a higher layer: {upward}"


def test_benchmarks_import_only_public_names():
    private = []
    for path in sorted(BENCHMARKS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comtip_sc"):
                parts = node.module.split(".")
                names = [a.name for a in node.names]
                if any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names):
                    private.append(f"{path.name}:{node.lineno} from {node.module} import {names}")
    assert not private, private
