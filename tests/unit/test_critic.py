"""The PPO critic: a copy of the agent's backbone with a value head, full or LoRA."""

from __future__ import annotations

import copy

import torch

from tests.toy_policy import toy_batch
from waltzlit.agents.critic import build_critic
from waltzlit.agents.loading import add_lora, load_causal_lm, load_tokenizer
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, LoRAConfig


def _policy():
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    return load_causal_lm(cfg, load_tokenizer(cfg))


def test_values_align_with_the_response_tokens():
    critic = build_critic(_policy())
    batch = toy_batch(rows=3, width=4)  # 2 context tokens + 4 response tokens
    batch.attention_mask[0, :1] = 0  # some left padding
    values = critic.values(batch)
    assert values.shape == (3, 4) and values.dtype == torch.float32
    # the value of response token j is read at position P - 1 + j (P = 2), like its log-prob
    everything = critic(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(values, everything[:, 1:5])


def test_full_critic_is_an_independent_trainable_copy():
    policy = _policy()
    critic = build_critic(policy)
    assert all(p.requires_grad for p in critic.parameters())
    # the backbone starts from the policy's weights but does not share them
    backbone = dict(critic.backbone.named_parameters())
    for name, param in policy.model.named_parameters():
        assert torch.equal(param, backbone[name]) and param.data_ptr() != backbone[name].data_ptr()


def test_lora_critic_trains_only_its_adapter_and_head():
    policy = add_lora(_policy(), LoRAConfig(r=4, alpha=8))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    critic = build_critic(policy, LoRAConfig(r=4, alpha=8))
    trainable = [n for n, p in critic.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)
    assert any(n.startswith("value_head") for n in trainable)
    # one training step moves the critic, never the policy
    optimizer = torch.optim.SGD(critic.trainable_parameters(), lr=1.0)
    critic.values(toy_batch(rows=2)).square().sum().backward()
    optimizer.step()
    for name, param in policy.named_parameters():
        assert torch.equal(before[name], param.detach())


def test_lora_critic_starts_from_the_base_weights():
    plain = _policy()
    batch = toy_batch(rows=2)
    full = build_critic(copy.deepcopy(plain))
    lora = build_critic(add_lora(plain, LoRAConfig(r=4, alpha=8)), LoRAConfig(r=4, alpha=8))
    # same backbone outputs (fresh adapters are the identity), same seeded head -> same values
    torch.testing.assert_close(lora.values(batch), full.values(batch), atol=1e-5, rtol=1e-5)


def test_lora_wrapping_prints_no_deprecation_note():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: a FutureWarning on every
    LoRA run (policy, critic, exported adapter) unless waltzlit's wrapping silences that one note."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = add_lora(_policy(), LoRAConfig(r=4, alpha=8))
        build_critic(policy, LoRAConfig(r=4, alpha=8))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
