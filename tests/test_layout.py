"""The test tree itself: pytest imports test modules by their basename (the tree has no ``__init__.py`` files), so
two test files with one name in different folders stop the whole suite at collection."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def test_every_test_module_has_a_name_of_its_own():
    seen: dict[str, list[str]] = defaultdict(list)
    root = Path(__file__).resolve().parent
    for path in root.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(root)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
