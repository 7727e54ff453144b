"""The house's one import direction (issue 18), read from the source by tools/layers.py:
dicom <- codecs/query <- storage/index <- rules/routing <- ingest <- jobs/net
<- node/web/admin/commands/cli, config at the top."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "layers.py"


def _layers():
    spec = importlib.util.spec_from_file_location("layers", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_runs_against_the_layers():
    layers = _layers()
    graph = layers.graph()
    assert len(graph) > 100  # the whole package was read
    assert layers.against(graph) == []


def test_the_check_sees_an_upward_import():
    """The checker itself: a module of a lower layer importing a higher one is reported."""
    layers = _layers()
    graph = {"compacs.dicom.status": {"compacs.web.api"}, "compacs.web.api": set()}
    assert layers.against(graph) == [
        "compacs.dicom.status -> compacs.web.api (layer 2 imports layer 8)"
    ]


def test_the_readme_layout_names_every_module():
    """The README's "Layout of the code" names each module of the tree (issue 18)."""
    root = TOOL.parents[1]
    readme = (root / "README.md").read_text()
    block = readme[readme.index("## Layout of the code") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    source = root / "src" / "compacs"
    modules = [
        path.relative_to(source)
        for path in source.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    ]
    assert len(modules) > 100
    missing = [str(m) for m in modules if not re.search(rf"\b{m.stem}(\.py)?\b", block)]
    assert missing == []


def test_reindex_uses_the_index_entry_points_only():
    """``compacs reindex`` loads through the index (``open_index`` and its bulk loader), not
    the SQL backends' statements, their private ``_sql`` or a driver connection of its own
    (issue 18)."""
    source = TOOL.parents[1] / "src" / "compacs" / "admin" / "reindex.py"
    tree = ast.parse(source.read_text())
    nodes = list(ast.walk(tree))
    imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)}
    drivers = {"sqlite3", "psycopg", "psycopg_pool"}
    assert sorted(m for m in imported if m.split(".")[0] in drivers) == []
    statements = [m for m in imported if (m + ".").startswith("compacs.index.sql.")]
    assert statements == []
    private = {n.attr for n in nodes if isinstance(n, ast.Attribute)} & {"_sql"}
    assert private == set()
