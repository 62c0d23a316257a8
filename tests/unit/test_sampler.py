"""The lean sampling loop gives exactly what Hugging Face ``generate`` gives, or is not used."""

from __future__ import annotations

import pytest
import torch

from waltzlit.agents.generation import generate_turns, left_pad
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.sampler import lean_sampling_supported, sample_tokens
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, SamplingConfig

PROMPTS = ["hi", "tell me about the moon and the river please", "x y z", "how do I bake bread?"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    tokenizer = load_tokenizer(cfg)
    return load_causal_lm(cfg, tokenizer), tokenizer


def _contexts(tokenizer, prompts):
    return [
        torch.tensor(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False))
        for p in prompts
    ]


def _hf(model, ids, mask, sampling, eos):
    kwargs = {"do_sample": False} if sampling.temperature == 0 else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens, pad_token_id=0,
                         eos_token_id=eos, return_dict_in_generate=True, output_logits=True, **kwargs)
    tokens = out.sequences[:, ids.shape[1]:]
    logprobs = torch.stack(
        [torch.log_softmax(step.float(), -1).gather(-1, tokens[:, k : k + 1]).squeeze(-1)
         for k, step in enumerate(out.logits)], dim=1)
    return tokens, logprobs


SETTINGS = {
    "plain T=1": (SamplingConfig(max_new_tokens=40), [2]),
    "T, top-k, top-p": (SamplingConfig(max_new_tokens=40, temperature=0.7, top_k=20, top_p=0.9), [2]),
    "greedy": (SamplingConfig(max_new_tokens=30, temperature=0), [2]),
    # many EOS ids: rows stop at different steps, finished rows are padded, the loop ends early
    "early stops": (SamplingConfig(max_new_tokens=50), list(range(2, 60))),
    "early stops, T and top-p": (SamplingConfig(max_new_tokens=50, temperature=1.3, top_p=0.8), list(range(2, 30))),
}


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded batch", "one unpadded row"])
@pytest.mark.parametrize("setting", list(SETTINGS.values()), ids=list(SETTINGS))
def test_same_tokens_logprobs_and_random_stream_as_generate(model_and_tokenizer, setting, padded):
    model, tokenizer = model_and_tokenizer
    sampling, eos = setting
    ids, mask = left_pad(_contexts(tokenizer, PROMPTS if padded else PROMPTS[1:2]), tokenizer.pad_token_id)
    torch.manual_seed(3)
    expected_tokens, expected_logprobs = _hf(model, ids, mask, sampling, eos)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(3)
    tokens, logprobs = sample_tokens(model, ids, mask, sampling, eos, 0, with_logprobs=True)
    assert torch.equal(tokens, expected_tokens)
    assert torch.equal(logprobs, expected_logprobs)
    assert torch.equal(torch.get_rng_state(), expected_rng), "later sampling would diverge"
    assert sample_tokens(model, ids, mask, sampling, eos, 0, with_logprobs=False)[1] is None


def test_generate_turns_is_unchanged_by_the_lean_loop(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    contexts, sampling = _contexts(tokenizer, PROMPTS), SamplingConfig(max_new_tokens=24)
    torch.manual_seed(5)
    lean = generate_turns(model, tokenizer, contexts, sampling, batch_size=3)
    monkeypatch.setattr("waltzlit.agents.generation.lean_sampling_supported", lambda *a: False)
    torch.manual_seed(5)
    reference = generate_turns(model, tokenizer, contexts, sampling, batch_size=3)
    for a, b in zip(lean, reference):
        assert torch.equal(a.response_ids, b.response_ids) and a.text == b.text and a.truncated == b.truncated
        assert torch.equal(a.logprobs, b.logprobs)


def test_other_logits_processors_or_several_ranks_fall_back_to_generate(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert lean_sampling_supported(model)
    assert not lean_sampling_supported(model, world_size=2)
    saved = model.generation_config.repetition_penalty
    model.generation_config.repetition_penalty = 1.1  # generate would add a processor the loop lacks
    try:
        assert not lean_sampling_supported(model)
    finally:
        model.generation_config.repetition_penalty = saved


def test_outputs_are_ordinary_tensors_and_llama_takes_the_prepared_mask(model_and_tokenizer):
    from waltzlit.agents.sampler import _prepared_decode_mask

    model, tokenizer = model_and_tokenizer
    assert _prepared_decode_mask(model), "the identity tests above must cover the prepared-mask path"
    ids, mask = left_pad(_contexts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    tokens, logprobs = sample_tokens(model, ids, mask, SamplingConfig(max_new_tokens=4), [2], 0)
    assert not tokens.is_inference() and not logprobs.is_inference()
    model.get_input_embeddings()(tokens).sum().backward()  # usable as indices of a training forward
    model.zero_grad(set_to_none=True)


def test_repeated_prompts_share_one_prefill_and_sample_the_same(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # a group layout: 2 prompts x 3 samples, left-padded together
    ids, mask = left_pad(_contexts(tokenizer, [p for p in PROMPTS[:2] for _ in range(3)]), tokenizer.pad_token_id)
    rows: list[int] = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    sampling = SamplingConfig(max_new_tokens=12)
    try:
        torch.manual_seed(7)
        full = sample_tokens(model, ids, mask, sampling, [2], 0, share_prefill=False)
        assert rows[0] == 6
        rows.clear()
        torch.manual_seed(7)
        shared = sample_tokens(model, ids, mask, sampling, [2], 0)
        assert rows[0] == 2 and set(rows[1:]) == {6}  # one prefill per prompt, then all six rows decode
    finally:
        hook.remove()
    assert torch.equal(shared[0], full[0])
    torch.testing.assert_close(shared[1], full[1], rtol=1e-5, atol=1e-5)
    assert not torch.equal(full[0][0], full[0][1])  # the samples of one prompt differ


@pytest.mark.parametrize("setting", ["greedy", "T, top-k, top-p", "early stops"])
def test_common_prefix_prefilled_once_samples_the_same(model_and_tokenizer, monkeypatch, setting):
    from waltzlit import kv_sharing

    monkeypatch.setattr(kv_sharing, "MIN_SAVED_FLOPS", 0.0)  # share whatever the saving (tiny model)
    model, tokenizer = model_and_tokenizer
    sampling, eos = SETTINGS[setting]
    system = "You judge answers. Output JSON with two flags and short feedback for the assistant."
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": p}] for p in [*PROMPTS, PROMPTS[1]]]
    contexts = [torch.tensor(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                           return_dict=False)) for c in chats]
    ids, mask = left_pad(contexts, tokenizer.pad_token_id)  # 5 rows, 4 lengths, rows 1 and 4 equal
    rows: list[int] = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: rows.append(kwargs["input_ids"].shape),
                                       with_kwargs=True)
    try:
        torch.manual_seed(11)
        full = sample_tokens(model, ids, mask, sampling, eos, 0, share_prefill=False)
        rows.clear()
        torch.manual_seed(11)
        shared = sample_tokens(model, ids, mask, sampling, eos, 0, share_prefix=True)
    finally:
        hook.remove()
    prefix = kv_sharing.common_prefix_length(ids, mask, ids.shape[1])
    assert prefix > 15  # the system turn and the user turn's opening
    # the prefix once as one row, then the 4 distinct remainders, then all 5 rows decode
    assert rows[0] == (1, prefix) and rows[1] == (4, ids.shape[1] - prefix) and rows[2] == (5, 1)
    assert torch.equal(shared[0], full[0])
    torch.testing.assert_close(shared[1], full[1], rtol=1e-5, atol=1e-5)


def test_preallocated_cache_layer_matches_a_growing_one():
    from transformers.cache_utils import DynamicLayer

    from waltzlit.agents.sampler import _PreallocatedLayer

    growing, preallocated = DynamicLayer(), _PreallocatedLayer(capacity=3)
    steps = [torch.randn(2, 1, 4, 5), torch.randn(2, 1, 1, 5), torch.randn(2, 1, 1, 5)]  # prompt, then 2 tokens
    for k in steps:
        expected, got = growing.update(k, -k), preallocated.update(k, -k)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert preallocated.get_seq_length() == growing.get_seq_length() == 6
    growing.batch_select_indices(torch.tensor([1, 1, 0]))
    preallocated.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(preallocated.keys, growing.keys) and torch.equal(preallocated.values, growing.values)


def test_under_autocast_the_loop_runs_without_inference_mode(model_and_tokenizer):
    # inference_mode would bypass autocast's cache of casted weights (a re-cast per op)
    model, tokenizer = model_and_tokenizer
    ids, mask = left_pad(_contexts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    seen: list[bool] = []
    hook = model.register_forward_hook(lambda m, a, o: seen.append(torch.is_inference_mode_enabled()))
    try:
        sample_tokens(model, ids, mask, SamplingConfig(max_new_tokens=3), [2], 0)
        plain = list(seen)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens, logprobs = sample_tokens(model, ids, mask, SamplingConfig(max_new_tokens=3), [2], 0)
    finally:
        hook.remove()
    assert plain and all(plain) and seen and not any(seen)
    assert not tokens.is_inference() and logprobs.dtype == torch.float32
