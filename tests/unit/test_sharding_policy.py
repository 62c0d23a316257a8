"""Lightning precision -> FSDP2 MixedPrecisionPolicy (waltzlit/training/sharding.py)."""

import torch

from waltzlit.training.sharding import mixed_precision_policy


def test_mixed_precisions_gather_in_half_and_reduce_in_fp32():
    bf16 = mixed_precision_policy("bf16-mixed")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    fp16 = mixed_precision_policy("16-mixed")
    assert fp16.param_dtype == torch.float16 and fp16.reduce_dtype == torch.float32


def test_other_precisions_keep_the_parameters_dtype():
    for precision in ("32-true", "bf16-true", "16-true", None):
        assert mixed_precision_policy(precision) is None


def test_lightning_short_aliases_mean_the_mixed_precisions():
    # Lightning reads "bf16" as "bf16-mixed" and "16" as "16-mixed"
    assert mixed_precision_policy("bf16").param_dtype == torch.bfloat16
    assert mixed_precision_policy("16").param_dtype == torch.float16
