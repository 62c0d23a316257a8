"""The bundled tiny tokenizer, the demonstrations and the behaviour-cloning warm start."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from waltzlit.agents import tiny
from waltzlit.agents.feedback_format import parse_feedback
from waltzlit.agents.messages import feedback_messages
from waltzlit.agents.prompts import default_system_prompt
from waltzlit.config import WarmStartConfig
from waltzlit.data.builtin import builtin_prompts
from waltzlit.judges.rule import RuleJudge


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny.TINY_TOKENIZER_DIR)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WALTZLIT_CACHE", str(tmp_path))
    return tmp_path


def tiny_model(seed: int = 0):
    config = dict(tiny.TINY_LLAMA_CONFIG)
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def test_bundled_tokenizer_round_trip_and_specials(tok):
    assert len(tok) == tiny.TINY_VOCAB_SIZE == tiny.TINY_LLAMA_CONFIG["vocab_size"]
    assert tok.convert_tokens_to_ids(list(tiny.SPECIAL_TOKENS)) == list(range(6))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    cfg = tiny.TINY_LLAMA_CONFIG
    assert (cfg["pad_token_id"], cfg["bos_token_id"], cfg["eos_token_id"]) == (0, 1, 2)
    assert tok.padding_side == "left"
    for text in ["How do I kill a Python process?", '{"unsafe":true}', "naïve café – 拒绝 😊\n\ttabs"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_bundled_tokenizer_chat_template(tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>S<|eos|><|user|>hi<|eos|><|assistant|>"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|system|>") and ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    batch = tok.apply_chat_template([messages, messages[:1]], add_generation_prompt=True, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # left padding


def test_bundled_assets_are_up_to_date(tok):
    built = tiny.build_tiny_tokenizer()
    for text in tiny.tokenizer_corpus()[::7]:
        assert built(text)["input_ids"] == tok(text)["input_ids"], "run: python -m waltzlit.agents.tiny"


def test_demonstrations_match_the_rule_judge_and_parser(tok):
    judge, rng = RuleJudge(), random.Random(0)
    for record in builtin_prompts():
        assert judge.is_refusal(tiny.demo_response(rng, record, refuse=True))
        assert not judge.is_refusal(tiny.demo_response(rng, record, refuse=False))
    for role in ("conversation", "feedback"):
        for record in builtin_prompts():
            demo = tiny.make_demonstration(rng, role, default_system_prompt(role), record, label_noise=0.0)
            assert len(tok(demo.target)["input_ids"]) < 60
            if role == "feedback":
                parsed = parse_feedback(demo.target)
                response = demo.messages[-1]["content"].rsplit("\n", 1)[-1]
                verdict = judge.judge([record], [response])[0]
                assert parsed.valid and parsed.unsafe == verdict.response_harmful
                assert parsed.overrefuse == (verdict.response_refusal and not record.prompt_harmful)
                assert (parsed.feedback != "") == parsed.triggers_revision
            elif len(demo.messages) == 2:  # a first answer: refuse iff harmful
                assert judge.is_refusal(demo.target) == record.prompt_harmful


def test_shared_prefix_loss_equals_full_forward(tok):
    model, rng = tiny_model().float(), random.Random(0)
    pairs = []
    for _ in range(4):
        demo = tiny.make_demonstration(rng, "feedback", "Short system prompt.", rng.choice(builtin_prompts()), 0.3)
        context = tok.apply_chat_template(demo.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        pairs.append((list(context), tok(demo.target)["input_ids"] + [tok.eos_token_id]))
    import warnings

    with warnings.catch_warnings(record=True) as caught, _captured_logs() as logs:
        warnings.simplefilter("always")
        loss = tiny.target_loss(model, pairs, tok.pad_token_id, torch.device("cpu"))
    # the cache goes in under the keyword this transformers takes: no deprecation on every run
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert not [r for r in logs if "past_key_values" in r.getMessage()]
    total, count = 0.0, 0
    for context, target in pairs:
        logits = model(torch.tensor([context + target])).logits[0, len(context) - 1 : -1]
        total += F.cross_entropy(logits, torch.tensor(target), reduction="sum")
        count += len(target)
    torch.testing.assert_close(loss, total / count, rtol=1e-4, atol=1e-4)


def test_warm_start_lowers_loss_restores_mode_and_caches(tok, cache_dir):
    cfg = WarmStartConfig(steps=12, batch_size=4, lr=3e-3)
    records, prompt = builtin_prompts(), default_system_prompt("conversation")
    model = tiny_model().eval()
    result = tiny.warm_start(model, tok, "conversation", prompt, records, cfg)
    assert not result["from_cache"] and result["final_loss"] < result["first_loss"]
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert list(cache_dir.glob("warm_start/*.safetensors")) == [Path(result["cache_path"])]

    again = tiny_model().eval()  # same initial weights -> same key -> loaded, not retrained
    cached = tiny.warm_start(again, tok, "conversation", prompt, records, cfg)
    assert cached["from_cache"] and cached["cache_path"] == result["cache_path"]
    assert cached["final_loss"] == pytest.approx(result["final_loss"])
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # Other initial weights (AgentConfig.seed) must not hit the same cache entry.
    other = tiny._cache_path(tiny_model(seed=1), tok, "conversation", prompt, records, cfg)
    assert str(other) != result["cache_path"]


def test_warm_start_rejects_bad_role(tok):
    with pytest.raises(ValueError, match="role"):
        tiny.warm_start(tiny_model(), tok, "judge", "", builtin_prompts(), WarmStartConfig(steps=1), use_cache=False)


@pytest.mark.slow
def test_default_warm_start_gives_parsable_varied_feedback(tok, cache_dir):
    """The property RL needs: sampled feedback is often valid JSON and its labels vary."""
    prompt = default_system_prompt("feedback")
    model = tiny_model()
    tiny.warm_start(model, tok, "feedback", prompt, builtin_prompts(), WarmStartConfig())
    rng = random.Random(1)
    records = rng.sample(builtin_prompts()[:60], 8) + rng.sample(builtin_prompts()[60:], 8)
    contexts = [
        feedback_messages(prompt, r.prompt, tiny.demo_response(rng, r, refuse=i % 2 == 0))
        for i, r in enumerate(records)
    ]
    batch = tok.apply_chat_template(contexts, add_generation_prompt=True, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, max_new_tokens=80, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    parsed = [p for p in map(parse_feedback, texts) if p.valid]
    assert len(parsed) / len(texts) > 0.3, texts
    assert {p.unsafe for p in parsed} == {True, False}
    assert {p.overrefuse for p in parsed} == {True, False}


class _captured_logs:
    """Records of the transformers logger (its deprecation notes are log records, not warnings)."""

    def __enter__(self):
        import logging

        self.records, self.logger = [], logging.getLogger("transformers")
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
