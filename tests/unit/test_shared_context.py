"""Shared-context, shared-prefix and length-bucketed log-prob forwards: the values and gradients of
the full forward, used only where they are exact, and AdamW's kernel choice."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from waltzlit import kv_sharing
from waltzlit.agents import logprobs as lp
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig
from waltzlit.training.module import adamw
from waltzlit.types import AgentBatch

CONTEXTS = lp.ForwardSharing(contexts=True)
EVERYTHING = lp.ForwardSharing(contexts=True, prefix=True, buckets=True)

CONTEXT, RESPONSE = 12, 9


def _model(**overrides):
    cfg = AgentConfig(model_config={**TINY_LLAMA_CONFIG, **overrides}, tokenizer="tiny")
    return load_causal_lm(cfg, load_tokenizer(cfg))


def _batch() -> AgentBatch:
    """Two contexts x 3 rows, then one row with a context of its own (7 rows): the second
    context is left-padded by 4, two responses are right-padded (ended early)."""
    g = torch.Generator().manual_seed(0)
    contexts = torch.randint(3, 200, (3, CONTEXT), generator=g)
    context_mask = torch.ones(3, CONTEXT, dtype=torch.long)
    contexts[1, :4], context_mask[1, :4] = 0, 0
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    responses = torch.randint(3, 200, (7, RESPONSE), generator=g)
    response_mask = torch.ones(7, RESPONSE, dtype=torch.long)
    response_mask[1, 5:], response_mask[4, 2:] = 0, 0
    responses[response_mask == 0] = 0
    return AgentBatch(
        input_ids=torch.cat([contexts[rows], responses], 1),
        attention_mask=torch.cat([context_mask[rows], response_mask], 1),
        response_mask=response_mask.float(),
        rewards=torch.zeros(7),
        generation_logprobs=None,
        group_ids=rows,
    )


@pytest.fixture
def always_share(monkeypatch):
    """Share whatever the saving (tiny models are below the cost threshold)."""
    monkeypatch.setattr(kv_sharing, "MIN_SAVED_FLOPS", 0.0)


def _forward_calls(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)
    return calls


def _gradient(model, values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Every parameter's gradient of sum(values * mask), flattened (the graph is kept)."""
    model.zero_grad()
    (values * response_mask).sum().backward(retain_graph=True)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_distinct_contexts_hand_made():
    # contexts (width 2): rows 0, 1, 3 equal; row 2 differs -> 2 distinct, first rows 0 and 2
    ids = torch.tensor([[5, 6, 1], [5, 6, 2], [7, 6, 3], [5, 6, 4]])
    mask = torch.ones_like(ids)
    first, inverse = lp.distinct_contexts(ids, mask, width=1)
    assert sorted(first[inverse].tolist()) == [0, 0, 0, 2]
    assert (ids[first[inverse], :2] == ids[:, :2]).all()
    assert lp.distinct_contexts(ids[:3], mask[:3], width=1) is not None  # rows 0, 1 share
    assert lp.distinct_contexts(ids[1:3], mask[1:3], width=1) is None  # all distinct
    # the same ids with a different padding mask are different contexts (pad id = a real token)
    mask[1, 0] = 0
    assert lp.distinct_contexts(ids[:2], mask[:2], width=1) is None


@pytest.mark.parametrize("train", [False, True], ids=["no-grad (old/reference)", "with gradients (loss)"])
def test_same_logprobs_and_gradients_as_the_full_forward(always_share, train):
    model, batch = _model(), _batch()
    model.train(train)
    calls = _forward_calls(model)
    full, full_entropy = lp.response_logprobs(model, batch, with_entropy=True)
    assert calls == [7]
    shared, shared_entropy = lp.response_logprobs(model, batch, with_entropy=True, sharing=CONTEXTS)
    assert calls == [7, 3, 7]  # 3 distinct contexts once, then the 7 responses after them
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_entropy[mask], full_entropy[mask], rtol=1e-5, atol=1e-5)
    if train:
        grads = [_gradient(model, values, batch.response_mask) for values in (full, shared)]
        assert grads[0].abs().sum() > 0
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_lora_policy_and_disabled_adapter_reference(always_share):
    model = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    batch = _batch()
    full = lp.response_logprobs(model, batch)[0]
    shared = lp.response_logprobs(model, batch, sharing=CONTEXTS)[0]
    with model.disable_adapter():
        base_full = lp.response_logprobs(model, batch)[0]
        base_shared = lp.response_logprobs(model, batch, sharing=CONTEXTS)[0]
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_shared[mask], base_full[mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[mask], base_full[mask])  # the adapter did change the policy


def test_full_forward_where_sharing_is_not_exact_or_not_worth_it(always_share):
    batch = _batch()
    sliding = _model(sliding_window=4, layer_types=["sliding_attention"] * TINY_LLAMA_CONFIG["num_hidden_layers"])
    assert not lp.shared_context_supported(sliding)
    checkpointed = _model()
    checkpointed.activation_checkpointing_enable()
    checkpointed.train()
    assert not lp.shared_context_supported(checkpointed)  # checkpointed layers drop the cache
    with torch.no_grad():
        assert lp.shared_context_supported(checkpointed)  # no backward to replay: the cache is kept
    calls = _forward_calls(checkpointed)
    lp.response_logprobs(checkpointed, batch, sharing=CONTEXTS)
    assert calls == [7]


def test_tiny_models_skip_the_split_by_its_cost():
    # 2 * params * skipped positions: (7 - 3) rows x 12 positions x ~0.1 M params ~ 1e7 < 2e9
    model, batch = _model(), _batch()
    calls = _forward_calls(model)
    lp.response_logprobs(model, batch, sharing=CONTEXTS)
    assert calls == [7]


def test_adamw_fused_unless_switched_off():
    params = [torch.nn.Parameter(torch.randn(4))]
    fused = adamw(params, AgentConfig(model="m"), 1e-3)
    foreach = adamw(params, AgentConfig(model="m", fused_adamw=False), 1e-3)
    assert fused.defaults["fused"] is True and not foreach.defaults["fused"]
    # one step from the same state: the same AdamW update up to rounding
    params[0].grad = torch.ones(4)
    start = params[0].detach().clone()
    fused.step()
    after_fused = params[0].detach().clone()
    params[0].data.copy_(start)
    foreach.step()
    torch.testing.assert_close(after_fused, params[0].detach())
    # first AdamW step with lr 1e-3: m_hat / sqrt(v_hat) = 1 per coordinate -> each weight -1e-3
    torch.testing.assert_close(after_fused, start - 1e-3)


# ----------------------------------------------------------------------------- a shared prefix
PREFIX = 6


def _prefixed_batch() -> AgentBatch:
    """8 rows whose contexts all begin with the same 6 tokens (a system prompt), then differ in
    content and length (2-14 more tokens: left padding 0-12); rows 2 and 3 share their whole
    context (a group); responses of 3-9 tokens, right-padded."""
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 200, (PREFIX,), generator=g)
    rest_lengths = [14, 2, 9, 9, 5, 12, 3, 7]
    response_lengths = [9, 3, 6, 8, 9, 4, 7, 5]
    rests = [torch.randint(3, 200, (n,), generator=g) for n in rest_lengths]
    rests[3] = rests[2]
    width_context, width_response = PREFIX + max(rest_lengths), max(response_lengths)
    ids = torch.zeros(8, width_context + width_response, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros(8, width_response)
    for row, (rest, n) in enumerate(zip(rests, response_lengths)):
        context = torch.cat([prefix, rest])
        ids[row, width_context - len(context) : width_context] = context
        ids[row, width_context : width_context + n] = torch.randint(3, 200, (n,), generator=g)
        mask[row, width_context - len(context) : width_context + n] = 1
        response_mask[row, :n] = 1
    return AgentBatch(input_ids=ids, attention_mask=mask, response_mask=response_mask, rewards=torch.zeros(8),
                      generation_logprobs=None, group_ids=torch.arange(8))


def test_common_prefix_length_and_drop_prefix_hand_made():
    # contexts (width 4, left-padded): [_ 5 6 7] [5 6 8 9] [_ _ 5 6]; response width 1
    ids = torch.tensor([[0, 5, 6, 7, 1], [5, 6, 8, 9, 2], [0, 0, 5, 6, 3]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    # all begin 5 6, but the shortest context (2 tokens) must keep one of its own -> K = 1
    assert kv_sharing.common_prefix_length(ids, mask, 4) == 1
    assert kv_sharing.common_prefix_length(ids[:2], mask[:2], 4) == 2  # [5 6 7] and [5 6 8 9]: 5 6
    assert kv_sharing.common_prefix_length(ids[:1], mask[:1], 4) == 0  # one row: nothing to share
    dropped_mask, dropped_ids = kv_sharing.drop_prefix(mask[:2], 2, ids[:2])
    # the row's padding moves to where its prefix was: [_ 5 6 7 1] -> [_ 7 1], [5 6 8 9 2] -> [8 9 2]
    assert dropped_ids.tolist() == [[0, 7, 1], [8, 9, 2]]
    assert dropped_mask.tolist() == [[0, 1, 1], [1, 1, 1]]


@pytest.mark.parametrize(
    "sharing, calls",
    [
        (lp.ForwardSharing(prefix=True), [1, 8]),  # the prefix once, then every row's remainder
        (lp.ForwardSharing(prefix=True, contexts=True), [1, 7, 8]),  # + the 7 distinct contexts once
        (lp.ForwardSharing(buckets=True), None),  # several padded forwards, rows by length
        (EVERYTHING, None),
    ],
    ids=["prefix", "prefix+contexts", "buckets", "all"],
)
@pytest.mark.parametrize("train", [False, True], ids=["no-grad", "with gradients"])
def test_prefix_and_buckets_equal_the_full_forward(always_share, sharing, calls, train):
    model, batch = _model(), _prefixed_batch()
    model.train(train)
    forward_calls = _forward_calls(model)
    full, full_entropy = lp.response_logprobs(model, batch, with_entropy=True)
    shared, shared_entropy = lp.response_logprobs(model, batch, with_entropy=True, sharing=sharing)
    if calls is not None:
        assert forward_calls[1:] == calls
    else:
        assert sum(forward_calls[1:]) >= 8 and len(forward_calls) > 2  # split into buckets
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_entropy[mask], full_entropy[mask], rtol=1e-5, atol=1e-5)
    assert shared.shape == full.shape
    if train:
        grads = [_gradient(model, values, batch.response_mask) for values in (full, shared)]
        assert grads[0].abs().sum() > 0
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_prefix_with_lora_gradients_and_disabled_adapter_reference(always_share):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(_model(), lora)
    batch = _prefixed_batch()
    results = {}
    for name, sharing in {"full": lp.NO_SHARING, "shared": EVERYTHING}.items():
        model.zero_grad()
        values = lp.response_logprobs(model, batch, sharing=sharing)[0]
        (values * batch.response_mask).sum().backward()
        lora_grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
        with torch.no_grad(), model.disable_adapter():
            reference = lp.response_logprobs(model, batch, sharing=sharing)[0]
        results[name] = (values.detach(), lora_grads, reference)
    mask = batch.response_mask.bool()
    (full, full_grads, full_ref), (shared, shared_grads, shared_ref) = results["full"], results["shared"]
    torch.testing.assert_close(shared[mask], full[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_ref[mask], full_ref[mask], rtol=1e-5, atol=1e-5)
    assert full_grads.abs().sum() > 0  # the prefix's gradient reaches the adapter through the cache
    torch.testing.assert_close(shared_grads, full_grads, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[mask], full_ref[mask])


def test_length_buckets_hand_made(always_share):
    # contexts 2, 2, 10, 10 and responses 1, 1, 6, 6: one forward pads 4 rows to 16 = 64 positions;
    # two buckets of 2 x 3 and 2 x 16 take 38 -> split; the short rows' bucket starts at column 8
    mask = torch.zeros(4, 16, dtype=torch.long)
    mask[:2, 8:11] = 1
    mask[2:, :16] = 1
    buckets = lp._length_buckets(_model(), mask, width=6)
    assert [(rows.tolist(), start, width) for rows, start, width in buckets] == [([0, 1], 8, 1), ([2, 3], 0, 6)]
    # a prefix shared by every row runs once per bucket: make every context 10 tokens, 9 shared
    mask[:2, :8] = 1  # contexts 10, 10, 10, 10; responses 1, 1, 6, 6
    # one forward: 4 x (10 - 9 + 6) + 9 = 37; two: 2 x (1 + 1) + 9 + 2 x (1 + 6) + 9 = 36 -> split
    assert len(lp._length_buckets(_model(), mask, width=6, prefix=9)) == 2
    # prefix 10: one forward 4 x 6 + 10 = 34, two 2 x 1 + 10 + 2 x 6 + 10 = 34 -> nothing saved
    assert lp._length_buckets(_model(), mask, width=6, prefix=10) is None


def test_no_data_dependent_split_when_sharded(always_share, monkeypatch):
    # sharded ranks must all make the same forward calls: no buckets, no prefix/context split
    model, batch = _model(), _prefixed_batch()
    monkeypatch.setattr(lp, "sharded", lambda model: True)
    monkeypatch.setattr(kv_sharing, "sharded", lambda model: True)
    calls = _forward_calls(model)
    lp.response_logprobs(model, batch, sharing=EVERYTHING)
    assert calls == [8]
