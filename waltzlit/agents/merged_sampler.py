"""A plain copy of a LoRA policy with its adapter merged into the weights, used for sampling only.

Why: a peft LoRA layer runs its base ``Linear`` and then, in Python, the adapter's two small
products, a scaling and an addition. In a decode step, where every product has a handful of rows,
that bookkeeping is a large share of the time: SmolLM2-135M at 8 rows on 2 CPU cores took 160 ms
per decode step with the adapter against 103 ms without (benchmarks/README.md). Serving engines
sample from merged weights for the same reason. Merging in place (peft's ``merge_adapter``) is
not an option: unmerging subtracts in floating point and leaves the base, which is also the
reference policy, a little different after every step.

So the copy holds ``W + scaling * B @ A`` for every adapted ``Linear`` and the rest of the model's
weights as they are, and is rewritten from the policy before the first sample after the policy
changed: after every step of an optimizer it watches (:meth:`MergedSampler.watch`; a fused
optimizer writes without bumping version counters), and after any other in-place write to the
adapted layers (a checkpoint load, a hand edit), which the parameters' version counters show.
The copy computes ``x (W + s B A)^T`` where the policy computes ``x W^T + s (x A^T) B^T``: the
same function, rounded differently in the last bits, so its tokens are the policy's samples and
its log-probs agree to ~1e-6 (``tests/unit/test_merged_sampler.py``). Training never reads it:
old, reference and loss log-probs come from the policy itself. It costs one more copy of the base weights.

With ``dtype`` (``AgentConfig.sampler_dtype``: bfloat16 or float16) the copy is kept in that
precision: half the bytes per decode step, and on CPUs with bf16 instructions faster products
(SmolLM2-135M on an AVX-512-bf16 CPU: benchmarks/README.md). That is *not* exact: the episodes are
then sampled from a rounded policy while pi_old and the loss use the policy's own precision, the
gap that vLLM-based trainers also have; ``…/update/logprob_mismatch`` logs its size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MergedSampler:
    """The sampling copy of one LoRA agent (module docstring).

    Args:
        policy: the peft-wrapped policy.
        adapter_name: the agent's adapter (several agents may share one base).
        dtype: the copy's dtype; None keeps the policy's.
    """

    def __init__(self, policy: nn.Module, adapter_name: str, dtype: torch.dtype | None = None) -> None:
        from peft.tuners.lora import LoraLayer

        self.adapter = adapter_name
        plain = copy.deepcopy(policy.get_base_model())
        self.pairs: list[tuple[nn.Module, nn.Linear]] = []
        adapted = {name: module for name, module in policy.get_base_model().named_modules()
                   if isinstance(module, LoraLayer)}
        for name, module in adapted.items():
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name) if parent_name else plain
            linear = getattr(parent, child).get_base_layer()  # the copied base Linear, unwrapped
            setattr(parent, child, linear)
            self.pairs.append((module, linear))
        self.model = plain.eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)
        self._watched = [p for module, _ in self.pairs for p in module.parameters()]
        self._synced_version: int | None = None  # None: stale

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Mark the copy stale after every step of ``optimizer`` (the policy's)."""
        optimizer.register_step_post_hook(lambda *args: self.mark_stale())

    def mark_stale(self) -> None:
        self._synced_version = None

    @staticmethod
    def supported(policy: nn.Module, adapter_name: str) -> str | None:
        """None when the policy can be merged exactly as a plain ``Linear`` per adapted layer, else
        the reason it cannot (quantised or non-Linear layers, DoRA, adapter biases, sharding)."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        if not hasattr(policy, "get_base_model"):
            return "the policy has no LoRA adapter"
        for name, module in policy.get_base_model().named_modules():
            if not isinstance(module, LoraLayer):
                continue
            if type(module) is not LoraLinear or type(module.get_base_layer()) is not nn.Linear:
                return f"{name} is a {type(module).__name__} (only plain Linear layers are merged)"
            if module.use_dora.get(adapter_name, False) or module.lora_bias.get(adapter_name, False):
                return f"{name} uses DoRA or an adapter bias"
        if any(type(m).__name__ == "ModulesToSaveWrapper" for m in policy.modules()):
            return "the policy trains whole modules beside its adapter (modules_to_save)"
        if any(type(p).__name__ == "DTensor" for p in policy.parameters()):
            return "the policy is sharded"
        return None

    def _version(self) -> int:
        return sum(p._version for p in self._watched)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rewrite every merged weight from the policy: ``W + scaling * B @ A`` (peft's delta)."""
        for module, linear in self.pairs:
            weight = module.get_base_layer().weight
            if self.adapter in module.lora_A:
                weight = weight + module.get_delta_weight(self.adapter)
            linear.weight.copy_(weight)  # merged in the policy's precision, then cast
        self._synced_version = self._version()

    def current(self) -> nn.Module:
        """The merged copy, rewritten first if the policy changed since the last rewrite."""
        if self._synced_version != self._version():
            self.refresh()
        return self.model
