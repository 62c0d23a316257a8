"""waltzlit's layering: every import between top-level modules and subpackages points down.

The rule (CONTRIBUTING.md, "Layers"): a module may import from its own subpackage and from
lower layers only, at module level or inside a function alike, so no import cycle between
subpackages can form. The graph is read with ``ast`` from the sources, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "waltzlit"

LAYERS: dict[str, int] = {
    # foundations: plain types, paths, process-group helpers, timers, cache plumbing
    "types": 0, "assets": 0, "distributed": 0, "timing": 0, "kv_sharing": 0, "cli_errors": 0,
    # pure maths, judges, metrics, prompt sources
    "algorithms": 1, "judges": 1, "metrics": 1, "data": 1, "memory_plan": 1,
    # configuration dataclasses (check names against the algorithm registries), rewards (use judges)
    "config": 2, "rewards": 3,
    # one agent: loading, prompting, sampling, log-probs
    "agents": 4,
    # the turn protocol over two agents
    "rollout": 5,
    # training (LightningModule) and deployment (chat, serve, loading exported agents)
    "training": 6, "deploy": 6,
    # evaluation runs deployed systems; the command line sits on top
    "evaluation": 7, "cli": 8, "plan": 9, "__main__": 9, "__init__": 9,
}


def _unit(path: Path) -> str:
    """The top-level module or subpackage a source file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path, source: str | None = None) -> set[str]:
    """The top-level modules and subpackages of waltzlit that ``path`` (or ``source`` read as that
    file) imports: absolute imports, ``from waltzlit import x`` and relative imports (resolved
    against the file's package) alike, so that no spelling of an import slips past the rule."""
    package = list(path.relative_to(PACKAGE.parent).parent.parts)  # e.g. ["waltzlit", "deploy"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            modules = [module + [alias.name] for alias in node.names]  # the names may be subpackages
        else:
            continue
        for parts in modules:
            if parts[0] == "waltzlit" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS and CONTRIBUTING.md: {sorted(units - set(LAYERS))}"


def test_imports_point_down():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        for target in _imports(path) - {unit}:
            if LAYERS.get(target, -1) >= LAYERS[unit]:
                violations.append(f"{path.relative_to(PACKAGE.parent)} ({unit}, layer {LAYERS[unit]}) imports "
                                  f"{target} (layer {LAYERS.get(target)})")
    assert not violations, "imports that do not point down:\n" + "\n".join(violations)


def test_every_spelling_of_an_import_is_read():
    # deploy (layer 6) reaching sideways into training (layer 6), written each way Python allows
    chat = PACKAGE / "deploy" / "chat.py"
    for source in ("import waltzlit.training.module", "from waltzlit.training.module import WaltzModule",
                   "from waltzlit import training", "from ..training import module",
                   "from ..training.module import WaltzModule", "def f():\n    from .. import training"):
        assert _imports(chat, source) == {"training"}, source
    assert _imports(chat, "from . import pipeline\nfrom .pipeline import Response") == {"deploy"}
    assert _imports(PACKAGE / "cli.py", "from .training.module import WaltzModule") == {"training"}
    assert _imports(PACKAGE / "deploy" / "__init__.py", "from .chat import main") == {"deploy"}
