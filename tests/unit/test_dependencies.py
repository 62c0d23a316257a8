"""Every third-party package waltzlit imports is declared in pyproject.toml.

A package that only arrives as another one's dependency can disappear with that one's next
release; declaring what is imported keeps ``pip install waltzlit`` working. The imports are read
with ``ast`` from the sources (nothing is imported); an import name is matched to its distribution
through the installed metadata (``yaml`` is PyYAML, ``PIL`` is pillow).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported() -> dict[str, str]:
    """Top-level third-party module -> the first file importing it (module level or in a function)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "waltzlit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "waltzlit" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    """Distribution names in ``dependencies`` and every ``optional-dependencies`` group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    return {_normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0)) for r in requirements}


def test_every_imported_package_is_declared():
    distributions, declared = packages_distributions(), _declared()
    missing = []
    for module, where in sorted(_imported().items()):
        names = {_normalized(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} (imported by {where}; distribution {', '.join(sorted(names))})")
    assert not missing, "declare these in pyproject.toml:\n" + "\n".join(missing)
