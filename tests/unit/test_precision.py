"""Precision that trains: the start-up check and the mechanism it guards against."""

from __future__ import annotations

import pytest
import torch

from waltzlit.config import AgentConfig, LoRAConfig
from waltzlit.training.precision import precision_warnings, smallest_effective_lr

FULL = dict(model_config={"model_type": "llama"}, tokenizer="tiny", lr=5e-7)


def test_smallest_effective_lr_hand_computed():
    # 0.02 is in [2**-6, 2**-5): bf16 spacing 2**-6 * 2**-7 = 2**-13 = 1.2207e-4, half 6.1035e-5;
    # fp16 spacing 2**-6 * 2**-10 = 2**-16 = 1.5259e-5, half 7.6294e-6.
    assert smallest_effective_lr("bfloat16") == pytest.approx(6.1035e-5, rel=1e-4)
    assert smallest_effective_lr("float16") == pytest.approx(7.6294e-6, rel=1e-4)


@pytest.mark.parametrize(("configs", "precision", "warned"), [
    ({"conversation": AgentConfig(**FULL)}, "bf16-true", ["conversation"]),            # the old paper recipe
    ({"feedback": AgentConfig(**FULL, dtype="bfloat16")}, "32-true", ["feedback"]),    # bf16 weights, fp32 run
    ({"conversation": AgentConfig(**FULL)}, "bf16-mixed", []),                         # fp32 masters: fine
    ({"conversation": AgentConfig(**{**FULL, "lr": 1e-4}, dtype="bfloat16")}, "32-true", []),  # lr large enough
    ({"conversation": AgentConfig(**FULL, lora=LoRAConfig())}, "bf16-true", []),       # LoRA adapters stay fp32
])
def test_precision_warnings_name_the_keys(configs, precision, warned):
    messages = precision_warnings(configs, precision)
    assert [m.split(".")[1].split(".")[0] for m in messages] == warned
    for message in messages:
        assert "dtype: float32 and trainer.precision: bf16-mixed" in message


def _changed_fraction(weight_dtype: torch.dtype, autocast: bool) -> float:
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256, bias=False)
    torch.nn.init.normal_(layer.weight, std=0.02)
    layer.to(weight_dtype)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=5e-7, weight_decay=0.0)
    x = torch.randn(64, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = layer(x.to(weight_dtype)).float().square().mean()
    loss.backward()
    optimizer.step()
    return float((layer.weight.detach() != before).float().mean())


def test_fp32_masters_with_bf16_compute_move_every_weight_at_lr_5e7():
    # AdamW's first step moves every weight by ~lr = 5e-7: fp32 represents that at 0.02 (spacing
    # 1.9e-9); bf16 does not (half-spacing 6.1e-5), so only weights near zero change.
    assert _changed_fraction(torch.float32, autocast=True) > 0.99     # bf16-mixed
    assert _changed_fraction(torch.bfloat16, autocast=False) < 0.05   # bf16-true
