"""Shared fixtures: every test runs offline on tiny models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT_SETS = REPO_ROOT / "waltzlit" / "assets" / "prompts"
"""The public prompt sets shipped with the package (XSTest, AdvBench, JailbreakBench)."""

# Keep torch to the machine's cores and never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def waltz_cache(tmp_path_factory) -> Path:
    """A warm-start cache shared by the tests of one session (warm starts are deterministic)."""
    path = Path(os.environ.get("WALTZLIT_CACHE") or tmp_path_factory.mktemp("waltzlit_cache"))
    os.environ["WALTZLIT_CACHE"] = str(path)
    return path

# Tiny models are bound by per-op dispatch, not FLOPs: one intra-op thread is as fast as two, and
# oversubscribed OpenMP threads (other processes on a 2-core machine) slow them tenfold.
import torch  # noqa: E402

torch.set_num_threads(1)
