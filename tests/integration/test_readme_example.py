"""The example report in README.md and docs/evaluation.md is what the README's two commands produce
today (benchmarks/readme_example.py)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_readme_example_table_regenerates(tmp_path):
    spec = importlib.util.spec_from_file_location("readme_example", REPO_ROOT / "benchmarks/readme_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    produced = module.regenerate(tmp_path)
    assert set(produced) == {module.README, module.DOCS}
    for path, block in produced.items():
        assert block.startswith(("| # | Method |", "ASR (%)")) and "| 5 | WaltzRL |" in block, block
        assert module.current(path) == block, f"{path.name} is stale; run: python benchmarks/readme_example.py --write"
