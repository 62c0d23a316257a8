"""The README's example table is what its two commands produce today (benchmarks/readme_example.py)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_readme_example_table_regenerates(tmp_path):
    spec = importlib.util.spec_from_file_location("readme_example", REPO_ROOT / "benchmarks/readme_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.regenerate(tmp_path) == module.readme_table(), "run: python benchmarks/readme_example.py --write"
