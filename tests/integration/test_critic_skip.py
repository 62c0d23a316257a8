"""The critic's non-finite skip is agreed across ranks: two gloo processes, one non-finite loss."""

from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp

from tests.integration.critic_skip_worker import run

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_both_ranks_skip_when_one_loss_is_non_finite(tmp_path):
    # Before the shared loop, rank 0 (finite) stepped while rank 1 (NaN) skipped on its own.
    mp.spawn(run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"steps": 0, "skipped": 1.0}] * 2
