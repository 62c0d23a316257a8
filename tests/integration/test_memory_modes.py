"""shared_base memory mode and QLoRA: one base, two adapters, the base as both references."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from waltzlit.agents.build import build_agents
from waltzlit.agents.logprobs import response_logprobs
from waltzlit.agents.messages import conversation_messages
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, AlgorithmConfig, LoRAConfig, SamplingConfig
from waltzlit.data.builtin import builtin_prompts
from waltzlit.rollout.samples import collate_generations
from waltzlit.training.update import policy_update, prepare_batch

pytestmark = pytest.mark.integration


def _configs(load_in_4bit=False):
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny", lora=LoRAConfig(r=4, alpha=8),
                      load_in_4bit=load_in_4bit, lr=1e-2)
    return {"conversation": cfg, "feedback": copy.deepcopy(cfg)}


def _batch(agent, n=4):
    records = builtin_prompts()[:n]
    contexts = [agent.encode(conversation_messages(agent.system_prompt, r.prompt)) for r in records]
    turns = agent.generate(contexts, SamplingConfig(max_new_tokens=6), batch_size=n, with_logprobs=False)
    return collate_generations(turns, [1.0, 0.0, 1.0, 0.0][:n], list(range(n)), agent.tokenizer.pad_token_id)


def _update(agent, batch):
    algo = AlgorithmConfig(micro_batch_size=2)
    batch, advantages, kl = prepare_batch(agent, batch, algo)
    optimizer = torch.optim.AdamW(agent.trainable_parameters(), lr=1e-2)
    params = agent.trainable_parameters()
    policy_update(agent, batch, advantages, kl, algo, optimizer, lambda loss: loss.backward(),
                  lambda: float(torch.nn.utils.clip_grad_norm_(params, 1.0)))


def _snapshot(model, tag):
    return {n: p.detach().clone() for n, p in model.named_parameters() if tag in n}


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["lora", "qlora"])
def test_shared_base_adapters_train_independently_and_base_is_the_reference(load_in_4bit):
    if load_in_4bit:
        pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    random.seed(0)
    built = build_agents(_configs(load_in_4bit), "shared_base", needs_reference=True, max_prompt_tokens=512,
                         warm_start_records=builtin_prompts)
    conversation, feedback = built.agents["conversation"], built.agents["feedback"]
    assert conversation.model is feedback.model and len(built.references) == 0
    model = conversation.model
    conv_before, fb_before = _snapshot(model, ".conversation."), _snapshot(model, ".feedback.")
    assert conv_before and fb_before
    # The two optimizers see disjoint parameter sets.
    assert not {id(p) for p in conversation.trainable_parameters()} & {id(p) for p in feedback.trainable_parameters()}

    batch = _batch(conversation)
    with model.disable_adapter():
        base_logprobs = response_logprobs(model, batch)[0]
    # Snapshot the base only now: on CPU, bitsandbytes (0.50) repacks a 4-bit weight into its CPU
    # kernel's layout at the first forward ([2048, 1] -> [64, 32] uint8), a new layout of the
    # same values. What must hold is that training leaves it alone from here on.
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    _update(conversation, batch)

    conv_after, fb_after = _snapshot(model, ".conversation."), _snapshot(model, ".feedback.")
    assert any(not torch.equal(conv_before[n], conv_after[n]) for n in conv_before), "conversation adapter unchanged"
    assert all(torch.equal(fb_before[n], fb_after[n]) for n in fb_before), "feedback adapter must not move"
    for name, value in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(base_before[name], value.detach()), f"base weight {name} moved"
    # Reference log-probs = the base with adapters disabled, for either agent, after training too.
    assert torch.allclose(conversation.reference_logprobs(batch), base_logprobs, atol=1e-5)
    assert torch.allclose(feedback.reference_logprobs(batch), base_logprobs, atol=1e-5)
    # ...while the trained conversation policy now differs from its reference.
    assert not torch.allclose(conversation.policy_logprobs(batch)[0].detach(), base_logprobs, atol=1e-5)

    _update(feedback, _batch(feedback))
    assert any(not torch.equal(fb_before[n], v) for n, v in _snapshot(model, ".feedback.").items())


def test_shared_base_rejects_mismatched_agents():
    configs = _configs()
    configs["feedback"].seed = 7
    with pytest.raises(ValueError, match="seed"):
        build_agents(configs, "shared_base", True, 512, builtin_prompts)
    configs = _configs()
    configs["feedback"].lora = None
    with pytest.raises(ValueError, match="model.feedback.lora"):
        build_agents(configs, "shared_base", True, 512, builtin_prompts)


def test_separate_lora_agents_have_their_own_base_as_reference():
    torch.manual_seed(0)
    built = build_agents(_configs(), "separate", needs_reference=True, max_prompt_tokens=512,
                         warm_start_records=builtin_prompts)
    conversation, feedback = built.agents["conversation"], built.agents["feedback"]
    assert conversation.model is not feedback.model and len(built.references) == 0  # no frozen copies
    batch = _batch(conversation)
    with conversation.model.disable_adapter():
        base_logprobs = response_logprobs(conversation.model, batch)[0]
    feedback_before = _snapshot(feedback.model, "lora_")
    _update(conversation, batch)
    assert torch.allclose(conversation.reference_logprobs(batch), base_logprobs, atol=1e-5)
    assert not torch.allclose(conversation.policy_logprobs(batch)[0].detach(), base_logprobs, atol=1e-5)
    assert all(torch.equal(v, _snapshot(feedback.model, "lora_")[n]) for n, v in feedback_before.items())
