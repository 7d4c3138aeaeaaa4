"""The package's shape (docs/layout in the README): imports point down the layers, lazy imports included, and the
top level holds only bottom-layer helpers."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cxr_fast"
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {"images": 0, "data": 1, "synth": 1, "convert": 2, "shards": 2, "model": 2, "pipelines": 3, "evaluate": 4,
          "train": 5, "deploy": 6, "doctor": 6, "cli": 7}
TOP_LEVEL = {"__init__", "dist", "seeds", "versions", "progress", "atomic", "errors", "run_folder", "lock", "disk"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr_fast"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cxr_fast"))
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_imports_point_down():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        if rel.name == "__main__":  # entry points (`torchrun -m cxr_fast.train`) call their command
            continue
        mine = _layer(".".join(rel.parts))
        if mine is None:  # top-level helpers: they import no package
            targets = [m for m in _imports(path) if _layer(m) is not None]
            wrong += [f"{rel} (top level) imports {t}" for t in targets]
            continue
        wrong += [f"{rel} imports {m}" for m in _imports(path) if (_layer(m) or 0) > mine]
    assert not wrong, "\n".join(sorted(wrong))


def test_top_level_holds_only_bottom_layer_helpers():
    tops = {p.stem for p in PKG.glob("*.py")}
    assert tops <= TOP_LEVEL, f"top-level modules that belong in a package: {sorted(tops - TOP_LEVEL)}"
    assert {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"} <= set(LAYERS)
