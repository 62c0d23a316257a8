"""A start-up check: full-precision training whose weights cannot move.

AdamW moves each weight by about ``lr`` per step. A weight stored in bf16 (or fp16) only takes
values spaced ``|w| * 2**-7`` (fp16: ``2**-10``) apart, so an update smaller than half that spacing
rounds back to the same value. For a typical weight of magnitude 0.02 that is 6.1e-5 in bf16 and
7.6e-6 in fp16: the paper's full fine-tuning rate of 5e-7 in ``bf16-true`` moves about 1 % of the
weights at all (measured on this CPU, 4096x4096 Linear at std 0.02, 10 AdamW steps: 0.97 % in bf16,
100 % in fp32). The fix is fp32 master weights with bf16 compute: ``dtype: float32`` and
``trainer.precision: bf16-mixed``. LoRA adapters are created in fp32 by peft and are not affected.
"""

from __future__ import annotations

from waltzlit.memory_plan import TRUE_HALF_PRECISIONS, normalise_precision, stored_dtype

TYPICAL_WEIGHT = 0.02
"""The magnitude the rule is stated at (the std of a Llama-style initialisation)."""

MANTISSA_BITS = {"bfloat16": 7, "float16": 10}


def smallest_effective_lr(dtype: str, weight: float = TYPICAL_WEIGHT) -> float:
    """Half the spacing of ``dtype`` values near ``weight``: AdamW steps below it round away.

    bf16 at 0.02: 0.02 lies in [2**-6, 2**-5), spacing 2**-6 * 2**-7 = 1.22e-4, half 6.1e-5.
    """
    import math

    exponent = math.floor(math.log2(weight))
    return 0.5 * 2.0**exponent * 2.0 ** -MANTISSA_BITS[dtype]


def precision_warnings(agent_configs: dict, trainer_precision: str | None) -> list[str]:
    """One message per trained full-precision agent whose weights would be stored in bf16/fp16 with
    a learning rate below :func:`smallest_effective_lr`, naming the keys to change."""
    messages = []
    true_precision = TRUE_HALF_PRECISIONS.get(normalise_precision(trainer_precision))
    for role, cfg in agent_configs.items():
        if cfg.lora is not None:
            continue  # peft keeps the adapter weights in fp32
        stored = stored_dtype(trainer_precision, cfg.dtype)
        if stored not in MANTISSA_BITS:
            continue
        floor = smallest_effective_lr(stored)
        if cfg.lr < floor:
            where = f"trainer.precision: {trainer_precision}" if true_precision else f"model.{role}.dtype: {cfg.dtype}"
            messages.append(
                f"model.{role}.lr: {cfg.lr:g} with the weights stored in {stored} ({where}): a weight of magnitude "
                f"{TYPICAL_WEIGHT} moves only with steps above {floor:.1e}, so most updates round away and the "
                f"{role} agent barely trains. Keep fp32 weights and compute in bf16: model.{role}.dtype: float32 "
                "and trainer.precision: bf16-mixed."
            )
    return messages
