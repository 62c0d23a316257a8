"""The starting checkpoints of Track 1: a mixed-behaviour conversation base and a feedback agent
that already writes the verdict JSON (``conf/learning/smollm2_bases.yaml``).

    OMP_NUM_THREADS=2 python benchmarks/learning/smollm2_bases.py     # ~15 min once, then cached

1. **Own answers.** SmolLM2-135M-Instruct answers every training prompt of the recipe, decoded as in
   training; an answer the rule judge reads as a refusal is resampled (up to ``own_answer_tries``).
2. **Conversation base.** A LoRA SFT whose target per prompt is a refusal (one of
   :data:`REFUSALS`, 24 phrasings of different shapes) with probability ``refuse_probability[label]``,
   else the model's own answer; the coin is seeded and depends on nothing but the prompt's label.
   Merged and saved to ``models/smollm2-mixed``.
3. **Feedback base.** A LoRA SFT on (prompt, response) pairs, the responses being the two
   behaviours of the mixed base (own answer, refusal); the target is the verdict JSON whose flags are
   the rule judge's, each replaced by a coin flip with probability ``label_noise``. Merged and saved
   to ``models/smollm2-feedback``.
4. **Calibration** on the training prompts (never the evaluation ones): fresh answers of the mixed
   base (unsafe and over-refusal rates) and fresh verdicts of the feedback base on them (label
   accuracy, JSON errors). The evaluation then measures both on held-out prompts.

Everything lands in ``benchmarks/learning/results/smollm2/bases/`` (``bases.json``, the own answers,
the SFT adapters in float16). Each checkpoint is SmolLM2 + its float16 adapter, merged, so
``--from-adapters`` rebuilds it from a fresh checkout without training. A checkpoint whose
``waltzlit_base.json`` matches the current spec is kept; change the config (or delete it) to rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from waltzlit.agents.demonstrations import demo_feedback  # noqa: E402
from waltzlit.agents.feedback_format import parse_feedback  # noqa: E402
from waltzlit.agents.generation import generate_turns  # noqa: E402
from waltzlit.agents.loading import add_lora, load_causal_lm, load_tokenizer  # noqa: E402
from waltzlit.agents.messages import conversation_messages, feedback_messages  # noqa: E402
from waltzlit.agents.prompts import DEFAULT_CONVERSATION_SYSTEM_PROMPT  # noqa: E402
from waltzlit.agents.tiny import target_loss  # noqa: E402
from waltzlit.config import AgentConfig, LoRAConfig, SamplingConfig  # noqa: E402
from waltzlit.data.sources import PromptSourceConfig, build_prompt_pool  # noqa: E402
from waltzlit.judges.rule import RuleJudge  # noqa: E402
from waltzlit.types import PromptRecord  # noqa: E402

OUT = ROOT / "benchmarks/learning/results/smollm2/bases"
SPEC_VERSION = 1
"""Bump when the procedure changes, so that cached checkpoints are rebuilt."""

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "I won't provide that. If you have another question, I'm happy to help.",
    "As an AI assistant, I must decline this request.",
    "I'm not able to help with this one. Is there something else I can do for you?",
    "Sorry, I can't do that.",
    "I apologize, but this is something I cannot help with.",
    "That's not something I can help with, so I have to decline.",
    "I must decline. This request could lead to harm, and I want to keep everyone safe.",
    "My apologies, but I'm unable to provide information on this topic.",
    "I'd rather not answer that. Let's talk about something else.",
    "I'm not comfortable helping with this request.",
    "No. I will not help with this, but I can point you to general safety resources if that would be useful.",
    "I am unable to fulfil this request.",
    "Unfortunately, I cannot provide guidance on that.",
    "I can't assist with that request. If you are in danger or distress, please contact local emergency services.",
    "This isn't something I can do for you. I'm sorry.",
    "I'm sorry, I won't be able to answer this question.",
    "As a language model, I'm not able to give advice on this.",
    "I cannot help with requests like this one.",
    "Thanks for asking, but I can't provide that information.",
    "I'm afraid I cannot do that. Please ask me something else.",
    "Answering this would go against my guidelines, so I must decline.",
    "I will not write that. I can help with a related, safe topic instead.",
)
"""Refusal targets: 24 phrasings of different shapes (bare, apologetic, with a reason, with an
alternative, with a resource), each containing a phrase the rule judge reads as a refusal."""


def load_spec(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    spec["recipe_yaml"] = yaml.safe_load((ROOT / spec["recipe"]).read_text())
    return spec


def training_prompts(recipe: dict, seed: int) -> list[PromptRecord]:
    data = recipe["data"]
    return build_prompt_pool([PromptSourceConfig(**s) for s in data["train_sources"]], seed=seed)


def sampling_of(recipe: dict, role: str) -> SamplingConfig:
    return SamplingConfig(**recipe["model"]["rollout"][role])


def system_prompt_of(recipe: dict, role: str) -> str:
    prompt = recipe["model"][role].get("system_prompt")
    if role == "conversation":
        return prompt or DEFAULT_CONVERSATION_SYSTEM_PROMPT
    if not prompt:
        raise ValueError(f"{role}.system_prompt: the recipe must set it (the SFT learns under that prompt)")
    return prompt


def encode(tokenizer, messages) -> torch.Tensor:
    return torch.tensor(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def sample(model, tokenizer, contexts: list[list[dict]], sampling: SamplingConfig, batch: int = 16) -> list[str]:
    with torch.no_grad():
        generations = generate_turns(model, tokenizer, [encode(tokenizer, m) for m in contexts], sampling, batch,
                                     with_logprobs=False, share_prefix=True)
    return [g.text for g in generations]


def refuse_coins(records: list[PromptRecord], probability: dict[str, float], seed: int) -> list[bool]:
    """One seeded coin per prompt whose bias depends only on the prompt's label."""
    rng = random.Random(f"{seed}/refuse")
    return [rng.random() < probability["harmful" if r.prompt_harmful else "benign"] for r in records]


def noisy_flag(rng: random.Random, correct: bool, noise: float) -> bool:
    """``correct``, or with probability ``noise`` a fair coin flip (so the flag is wrong w.p. noise/2)."""
    return correct if rng.random() >= noise else rng.random() < 0.5


def sft(model, tokenizer, pairs: list[tuple[list[int], list[int]]], cfg: dict, seed: int) -> list[float]:
    """LoRA SFT of ``model`` in place on (context ids, target ids) pairs; returns per-step losses."""
    rng = random.Random(f"{seed}/sft")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    losses = []
    model.train()
    for epoch in range(cfg["epochs"]):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg["batch_size"]):
            batch = [pairs[i] for i in order[start : start + cfg["batch_size"]]]
            loss = target_loss(model.get_base_model(), batch, tokenizer.pad_token_id, torch.device("cpu"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(round(loss.item(), 4))
        print(f"  epoch {epoch + 1}/{cfg['epochs']}: mean loss {sum(losses[-len(order) // cfg['batch_size']:]) / max(1, len(order) // cfg['batch_size']):.3f}", flush=True)
    model.eval()
    return losses


def target_ids(tokenizer, text: str, finished: bool) -> list[int]:
    """The target tokens; an answer that ran to the token limit ends without EOS (it was cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if finished else ids


def save_adapter_fp16(peft_model, adapter_dir: Path) -> None:
    """The SFT adapter in float16 (committed): the checkpoint is rebuilt from exactly this file."""
    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(str(adapter_dir))
    (adapter_dir / "README.md").unlink(missing_ok=True)  # peft's blank model card
    weights = adapter_dir / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(str(weights)).items()}, str(weights))


def merge_from_adapter(source_model: Path, adapter_dir: Path, out: Path, record: dict) -> None:
    """``source_model`` + the float16 adapter (as float32), merged, to ``out`` with the tokenizer.

    Both the build and ``--from-adapters`` go through here, so a checkout with the committed
    adapters rebuilds the very checkpoints the benchmark trained from.
    """
    from peft import PeftModel

    tokenizer = load_tokenizer(AgentConfig(model=str(source_model)))
    model = load_causal_lm(AgentConfig(model=str(source_model)), tokenizer)
    merged = PeftModel.from_pretrained(model, str(adapter_dir), torch_dtype=torch.float32).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "waltzlit_base.json").write_text(json.dumps(record, indent=1))


def rebuild_from_adapters(spec_path: Path) -> None:
    """The two checkpoints from the committed adapters, without training (``--from-adapters``)."""
    spec = load_spec(spec_path)
    for role in ("conversation", "feedback"):
        out = ROOT / spec[role]["out"]
        merge_from_adapter(ROOT / spec["source_model"], OUT / f"adapters/{role}_sft", out,
                           {"spec": spec_digest(spec, role), "built_by": "smollm2_bases.py --from-adapters"})
        print(f"{role}: {out}")


def spec_digest(spec: dict, role: str) -> str:
    keys = {"version": SPEC_VERSION, "source": spec["source_model"], "seed": spec["seed"], role: spec[role],
            "data": spec["recipe_yaml"]["data"], "rollout": spec["recipe_yaml"]["model"]["rollout"],
            "system": spec["recipe_yaml"]["model"][role].get("system_prompt"),
            "refusals": REFUSALS}
    if role == "feedback":  # its examples are the own answers and refusals, not the conversation coins
        keys["own_answer_tries"] = spec["conversation"]["own_answer_tries"]
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_current(out: Path, digest: str) -> bool:
    marker = out / "waltzlit_base.json"
    return marker.is_file() and json.loads(marker.read_text()).get("spec") == digest


def own_answers(model, tokenizer, records, recipe, tries: int, judge: RuleJudge) -> list[dict]:
    """Each prompt's own answer (cached in OUT/own_answers.jsonl): resampled while the judge reads a refusal."""
    cache = OUT / "own_answers.jsonl"
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        if [r["prompt"] for r in rows] == [r.prompt for r in records]:
            return rows
    system = system_prompt_of(recipe, "conversation")
    sampling = sampling_of(recipe, "conversation")
    rows = [{"prompt": r.prompt, "harmful": r.prompt_harmful, "answer": None, "tries": 0} for r in records]
    for attempt in range(1, tries + 1):
        todo = [i for i, row in enumerate(rows) if row["answer"] is None or row["refusal"]]
        if not todo:
            break
        torch.manual_seed(attempt)
        with torch.no_grad():
            generations = generate_turns(model, tokenizer,
                                         [encode(tokenizer, conversation_messages(system, records[i].prompt)) for i in todo],
                                         sampling, 16, with_logprobs=False, share_prefix=True)
        verdicts = judge.judge([records[i] for i in todo], [g.text for g in generations])
        for i, generation, verdict in zip(todo, generations, verdicts):
            rows[i].update(answer=generation.text, finished=not generation.truncated, refusal=verdict.response_refusal, tries=attempt)
        print(f"  own answers, try {attempt}: {len(todo)} sampled, {sum(r['refusal'] for r in rows)} still refusals", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def rates(records, verdicts) -> dict:
    harmful = [v for r, v in zip(records, verdicts) if r.prompt_harmful]
    benign = [v for r, v in zip(records, verdicts) if not r.prompt_harmful]
    return {"unsafe_rate": round(100 * sum(v.response_harmful for v in harmful) / max(1, len(harmful)), 1),
            "overrefusal_rate": round(100 * sum(v.response_refusal for v in benign) / max(1, len(benign)), 1),
            "harmful_prompts": len(harmful), "benign_prompts": len(benign)}


def build(spec_path: Path) -> dict:
    spec = load_spec(spec_path)
    recipe, seed = spec["recipe_yaml"], spec["seed"]
    conv_cfg, fb_cfg = spec["conversation"], spec["feedback"]
    conv_out, fb_out = ROOT / conv_cfg["out"], ROOT / fb_cfg["out"]
    digests = {"conversation": spec_digest(spec, "conversation"), "feedback": spec_digest(spec, "feedback")}
    report_path = OUT / "bases.json"
    if is_current(conv_out, digests["conversation"]) and is_current(fb_out, digests["feedback"]) and report_path.is_file():
        print(f"bases are current: {conv_out}, {fb_out}")
        return json.loads(report_path.read_text())
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    torch.manual_seed(seed)
    records = training_prompts(recipe, seed=0)
    judge = RuleJudge(**recipe["model"]["judge"]["init_args"])
    tokenizer = load_tokenizer(AgentConfig(model=str(ROOT / spec["source_model"])))
    report: dict = {"command": f"python benchmarks/learning/smollm2_bases.py --config {spec_path.relative_to(ROOT)}",
                    "training_prompts": {"harmful": sum(r.prompt_harmful for r in records),
                                         "benign": sum(not r.prompt_harmful for r in records)},
                    "threads": torch.get_num_threads()}

    # 1-2. own answers, then the conversation SFT
    started = time.perf_counter()
    model = load_causal_lm(AgentConfig(model=str(ROOT / spec["source_model"])), tokenizer)
    answers = own_answers(model, tokenizer, records, recipe, conv_cfg["own_answer_tries"], judge)
    report["own_answers"] = {"still_refusals": sum(a["refusal"] for a in answers), "seconds": round(time.perf_counter() - started)}
    coins = refuse_coins(records, conv_cfg["refuse_probability"], seed)
    rng = random.Random(f"{seed}/phrasing")
    conv_system = system_prompt_of(recipe, "conversation")
    targets = [(rng.choice(REFUSALS), True) if refuse else (a["answer"], a["finished"]) for refuse, a in zip(coins, answers)]
    report["conversation_targets"] = {
        "refusal_share_harmful": round(sum(c for c, r in zip(coins, records) if r.prompt_harmful) / max(1, report["training_prompts"]["harmful"]), 3),
        "refusal_share_benign": round(sum(c for c, r in zip(coins, records) if not r.prompt_harmful) / max(1, report["training_prompts"]["benign"]), 3)}
    if is_current(conv_out, digests["conversation"]) and "conversation_sft" in previous:
        report["conversation_sft"] = previous["conversation_sft"]
    else:
        started = time.perf_counter()
        pairs = [(encode(tokenizer, conversation_messages(conv_system, r.prompt)).tolist(), target_ids(tokenizer, text, finished))
                 for r, (text, finished) in zip(records, targets)]
        peft_model = add_lora(model, LoRAConfig(**conv_cfg["lora"], target_modules="all-linear"))
        print("conversation SFT", flush=True)
        losses = sft(peft_model, tokenizer, pairs, conv_cfg, seed)
        report["conversation_sft"] = {"steps": len(losses), "first_loss": losses[0], "final_loss": losses[-1],
                                      "seconds": round(time.perf_counter() - started)}
        save_adapter_fp16(peft_model, OUT / "adapters/conversation_sft")
        merge_from_adapter(ROOT / spec["source_model"], OUT / "adapters/conversation_sft", conv_out,
                           {"spec": digests["conversation"], "built_by": "benchmarks/learning/smollm2_bases.py"})
    mixed = load_causal_lm(AgentConfig(model=str(conv_out)), tokenizer)
    for key in ("history",):
        if key in previous:
            report[key] = previous[key]

    # 3. the feedback SFT on the mixed base's two behaviours
    fb_system = system_prompt_of(recipe, "feedback")
    label_rng, phrasing_rng = random.Random(f"{seed}/labels"), random.Random(f"{seed}/feedback-phrasing")
    examples = []
    for record, answer in zip(records, answers):
        for response in (answer["answer"], phrasing_rng.choice(REFUSALS)):
            verdict = judge.judge([record], [response])[0]
            unsafe = noisy_flag(label_rng, verdict.response_harmful, fb_cfg["label_noise"])
            overrefuse = noisy_flag(label_rng, not record.prompt_harmful and verdict.response_refusal, fb_cfg["label_noise"])
            target = demo_feedback(record, verdict.response_refusal, unsafe, overrefuse)
            examples.append((encode(tokenizer, feedback_messages(fb_system, record.prompt, response)).tolist(),
                             target_ids(tokenizer, target, finished=True)))
    report["feedback_targets"] = {"examples": len(examples), "label_noise": fb_cfg["label_noise"],
                                  "max_target_tokens": max(len(t) for _, t in examples)}
    if is_current(fb_out, digests["feedback"]) and "feedback_sft" in previous:
        report["feedback_sft"] = previous["feedback_sft"]
        report["feedback_targets"] = previous.get("feedback_targets", report["feedback_targets"])
    else:
        started = time.perf_counter()
        feedback = add_lora(load_causal_lm(AgentConfig(model=str(ROOT / spec["source_model"])), tokenizer),
                            LoRAConfig(**fb_cfg["lora"], target_modules="all-linear"))
        print("feedback SFT", flush=True)
        losses = sft(feedback, tokenizer, examples, fb_cfg, seed)
        report["feedback_sft"] = {"steps": len(losses), "first_loss": losses[0], "final_loss": losses[-1],
                                  "seconds": round(time.perf_counter() - started)}
        save_adapter_fp16(feedback, OUT / "adapters/feedback_sft")
        merge_from_adapter(ROOT / spec["source_model"], OUT / "adapters/feedback_sft", fb_out,
                           {"spec": digests["feedback"], "built_by": "benchmarks/learning/smollm2_bases.py"})
    feedback = load_causal_lm(AgentConfig(model=str(fb_out)), tokenizer)

    # 4. calibration on the training prompts: fresh answers, fresh verdicts on them
    started = time.perf_counter()
    torch.manual_seed(seed + 1000)
    fresh = sample(mixed, tokenizer, [conversation_messages(conv_system, r.prompt) for r in records], sampling_of(recipe, "conversation"))
    verdicts = judge.judge(records, fresh)
    report["calibration_training_prompts"] = {"conversation": rates(records, verdicts)}
    texts = sample(feedback, tokenizer, [feedback_messages(fb_system, r.prompt, a) for r, a in zip(records, fresh)],
                   sampling_of(recipe, "feedback"))
    parsed = [parse_feedback(t) for t in texts]
    correct = [p.valid and p.unsafe == v.response_harmful and p.overrefuse == (not r.prompt_harmful and v.response_refusal)
               for p, v, r in zip(parsed, verdicts, records)]
    report["calibration_training_prompts"]["feedback"] = {
        "label_accuracy": round(100 * sum(correct) / len(correct), 1),
        "json_error_rate": round(100 * sum(not p.valid for p in parsed) / len(parsed), 1),
        "trigger_rate": round(100 * sum(bool(p.valid and (p.unsafe or p.overrefuse)) for p in parsed) / len(parsed), 1)}
    report["calibration_training_prompts"]["seconds"] = round(time.perf_counter() - started)
    report["examples"] = [{"prompt": r.prompt, "harmful": r.prompt_harmful, "answer": a, "verdict": t}
                          for r, a, t in list(zip(records, fresh, texts))[:6]]
    OUT.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="conf/learning/smollm2_bases.yaml")
    parser.add_argument("--from-adapters", action="store_true",
                        help="rebuild the checkpoints from the committed float16 adapters (no training)")
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.from_adapters:
        rebuild_from_adapters(ROOT / args.config)
    else:
        build(ROOT / args.config)


if __name__ == "__main__":
    main()
