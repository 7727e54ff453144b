"""The import graph of ``src/compacs`` against the house's one direction (issue 18).

Layers, lowest first (a module may import its own layer and those below it only)::

    dicom <- codecs/query <- storage/index <- rules/routing <- ingest <- jobs/net
          <- node/web/admin/cli

with the support modules that import nothing of compacs (logging, failpoints, metrics, ...)
below ``dicom``, and ``config`` (the settings file) in the top layer: lower layers take
values, not the Settings object. Usage: ``python tools/layers.py [--graph]``; prints every
import against the direction and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS: list[tuple[str, ...]] = [
    (
        "compacs",
        "clock",
        "units",
        "failpoints",
        "logs",
        "lockfile",
        "metrics",
        "security",
        "backends",
    ),
    ("libraries",),
    ("dicom",),
    ("codecs", "query", "synthetic"),
    ("storage", "index"),
    ("rules", "routing"),
    ("ingest",),
    ("jobs", "net", "activity"),
    ("node", "web", "admin", "commands", "cli", "config"),
]
FORBIDDEN = {("config", "web")}
"""Pairs within one layer that must not import each other (settings do not know the web)."""


def room(module: str) -> str:
    """``compacs.net.store`` -> ``net``; ``compacs`` -> ``compacs``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    name = room(module)
    for number, rooms in enumerate(LAYERS):
        if name in rooms or name == "__main__":
            return number if name != "__main__" else len(LAYERS) - 1
    raise KeyError(f"{module}: in no layer of tools/layers.py LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The compacs modules ``path`` imports (``from compacs.x import y``: ``compacs.x.y`` when
    that is a module, else ``compacs.x``), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("compacs")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("compacs"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                where = SRC / Path(*sub.split("."))
                is_module = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                found.add(sub if is_module else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((SRC / "compacs").rglob("*.py"))}


def against(edges: dict[str, set[str]]) -> list[str]:
    """Every import against the direction, as ``importer -> imported (layer a < b)``."""
    problems = []
    for importer, targets in edges.items():
        for target in sorted(targets):
            if room(importer) == room(target):
                continue
            if layer(target) > layer(importer):
                problems.append(
                    f"{importer} -> {target} (layer {layer(importer)} imports layer "
                    f"{layer(target)})"
                )
            elif (room(importer), room(target)) in FORBIDDEN:
                problems.append(f"{importer} -> {target} (forbidden pair)")
    return problems


def main() -> int:
    edges = graph()
    if "--graph" in sys.argv:
        for importer, targets in edges.items():
            print(f"{importer} [{layer(importer)}] -> {', '.join(sorted(targets)) or '-'}")
    problems = against(edges)
    for line in problems:
        print(line)
    print(
        f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, "
        f"{len(problems)} against the direction"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
