"""The merged LoRA sampling copy: the policy's function (to rounding), rewritten after every update,
never touching the policy or its reference, and refused where it cannot be exact."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from waltzlit.agents.build import merged_sampler
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.merged_sampler import MergedSampler
from waltzlit.agents.sampler import sample_tokens
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, LoRAConfig, SamplingConfig
from waltzlit.training.module import adamw


def _policy(**lora):
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    model = load_causal_lm(cfg, load_tokenizer(cfg))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora)
    return get_peft_model(model, config).eval()


def _ids():
    return torch.randint(3, 200, (3, 20), generator=torch.Generator().manual_seed(0))


def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), -1)


def test_the_copy_is_the_policy_and_is_rewritten_after_each_update():
    policy, ids = _policy(), _ids()
    sampler = MergedSampler(policy, "default")
    with torch.no_grad(), policy.disable_adapter():
        reference_before = _logprobs(policy, ids)
    torch.testing.assert_close(_logprobs(sampler.current(), ids), _logprobs(policy, ids), rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name, _ in sampler.model.named_parameters())  # plain Linear layers

    # one fused AdamW step on the adapter: the copy is stale until current() sees the new versions
    optimizer = adamw([p for p in policy.parameters() if p.requires_grad], AgentConfig(model="m"), 1e-2)
    sampler.watch(optimizer)  # a fused step writes without bumping the parameters' versions
    torch.log_softmax(policy(input_ids=ids).logits, -1)[..., 5].sum().backward()
    optimizer.step()
    stale = _logprobs(sampler.model, ids)
    assert not torch.allclose(stale, _logprobs(policy, ids), atol=1e-4)
    torch.testing.assert_close(_logprobs(sampler.current(), ids), _logprobs(policy, ids), rtol=1e-5, atol=1e-5)
    # any other in-place write (a checkpoint load) shows in the version counters
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if "lora_B" in n).mul_(2.0)
    torch.testing.assert_close(_logprobs(sampler.current(), ids), _logprobs(policy, ids), rtol=1e-5, atol=1e-5)
    # the reference (the base with the adapter disabled) was never written to
    with torch.no_grad(), policy.disable_adapter():
        assert torch.equal(_logprobs(policy, ids), reference_before)


def test_greedy_tokens_equal_the_policy_samples():
    policy = _policy()
    sampler = MergedSampler(policy, "default")
    ids, mask = _ids(), torch.ones(3, 20, dtype=torch.long)
    mask[0, :5] = 0
    greedy = SamplingConfig(max_new_tokens=16, temperature=0)
    from_policy = sample_tokens(policy, ids, mask, greedy, [2], 0)
    from_copy = sample_tokens(sampler.current(), ids, mask, greedy, [2], 0)
    assert torch.equal(from_copy[0], from_policy[0])
    torch.testing.assert_close(from_copy[1], from_policy[1], rtol=1e-5, atol=1e-5)


def test_refused_where_a_merge_is_not_a_plain_linear():
    assert "DoRA" in MergedSampler.supported(_policy(use_dora=True), "default")
    assert "modules_to_save" in MergedSampler.supported(_policy(modules_to_save=["lm_head"]), "default")
    assert MergedSampler.supported(_policy(), "default") is None
    cfg = AgentConfig(model="m", merged_lora_sampler=True)
    with pytest.raises(ValueError, match=r"model\.feedback\.merged_lora_sampler: .*lora is null"):
        merged_sampler(cfg, "feedback", _policy().get_base_model(), "default")
    cfg = AgentConfig(model="m", lora=LoRAConfig(), merged_lora_sampler=False)
    assert merged_sampler(cfg, "feedback", _policy(), "default") is None


def test_a_bf16_copy_is_close_not_exact_and_needs_the_merged_sampler():
    policy, ids = _policy(), _ids()
    sampler = MergedSampler(policy, "default", torch.bfloat16)
    copy = sampler.current()
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert next(policy.parameters()).dtype == torch.float32  # the policy keeps its precision
    gap = (_logprobs(copy, ids).exp() - _logprobs(policy, ids).exp()).abs().max()
    assert 0 < gap < 0.02  # bf16 rounding: close in probability, not equal
    cfg = AgentConfig(model="m", lora=LoRAConfig(), sampler_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"model\.conversation\.sampler_dtype: 'bfloat16' needs merged_lora_sampler"):
        merged_sampler(cfg, "conversation", policy, "default")
