"""Loss denominators summed over ranks: a token-mean policy update and a critic update sharded
with FSDP2 over two CPU processes (gloo) equal the single-process update, although the ranks hold
different numbers of tokens (16 and 20)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from tests.integration import dp_norm_worker
from tests.integration.test_fsdp import _free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _moved_equally(a: dict, b: dict) -> int:
    for name, value in a.items():
        assert torch.allclose(value, b[name], atol=1e-5), name
    return len(a)


def test_two_ranks_token_mean_policy_and_critic_match_one_process(tmp_path):
    single, sharded = tmp_path / "single.pt", tmp_path / "sharded.pt"
    dp_norm_worker.run(0, 1, 0, str(single))
    mp.spawn(dp_norm_worker.run, args=(2, _free_port(), str(sharded)), nprocs=2, join=True)
    a, b = torch.load(single, weights_only=True), torch.load(sharded, weights_only=True)
    assert _moved_equally(a["policy"], b["policy"]) > 0
    assert _moved_equally(a["critic"], b["critic"]) > 0
