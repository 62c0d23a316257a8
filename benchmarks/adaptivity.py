"""Adaptivity: the two-agent rollout's cost at forced feedback trigger rates, vs c0 + f0 alone.

    python benchmarks/adaptivity.py                 # 16 prompts, 5 interleaved repeats
    python benchmarks/adaptivity.py --threads 1

Benchmark 3 of the performance issue. Two randomly initialised tiny Llamas (the equal-work
fixture, benchmarks/common.py) play the two agents; the feedback *decision* is forced by replacing
``parse_feedback`` in the rollout (this benchmark only) with verdicts that flag exactly 0 %, 50 %
or 100 % of the episodes, so the revision turn runs for that share. Each repeat times, in turn:

- ``c0 + f0 alone``: the conversation agent's first answers and the feedback agent's verdicts,
  generated directly (render, tokenise, ``Agent.generate``), with no protocol around them;
- ``run_episodes`` at each trigger rate, with its stage timers (rollout/c0, rollout/feedback,
  rollout/revision).

Every variant is seeded identically, so c0 and f0 are the same tokens in all of them. Reported:
median seconds per rollout and the ratio to ``c0 + f0 alone`` (target at 0 %: <= 1.1x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, model_dir, prompts, table, uptime, write_result  # noqa: E402

RATES = (0.0, 0.5, 1.0)


class ForcedVerdicts:
    """Stands in for ``parse_feedback``: a valid verdict that flags the response (a revision
    follows) for ``rate`` of the calls, evenly spread, and calls it satisfactory otherwise."""

    def __init__(self, rate: float) -> None:
        self.rate, self.calls = rate, 0

    def __call__(self, text: str):
        from waltzlit.types import ParsedFeedback

        flag = int((self.calls + 1) * self.rate) > int(self.calls * self.rate)
        self.calls += 1
        return ParsedFeedback(valid=True, unsafe=flag, overrefuse=False, feedback="Decline and offer safe help.",
                              reasoning="forced")


def build(size: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from waltzlit.agents.agent import Agent

    folder = str(model_dir(size))
    agents = []
    for role in ("conversation", "feedback"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        agents.append(Agent(role, model, tokenizer, system_prompt="", reference=None))
    return agents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="adaptivity")
    args = parser.parse_args()

    import torch

    import waltzlit.rollout.protocol as protocol
    from waltzlit.agents.messages import conversation_messages, feedback_messages
    from waltzlit.config import RolloutConfig, SamplingConfig
    from waltzlit.timing import StageTimer
    from waltzlit.types import PromptRecord

    if args.threads:
        torch.set_num_threads(args.threads)
    conversation, feedback = build(args.size)
    records = [PromptRecord(p, False, "bench") for p in prompts(args.prompts)]
    cfg = RolloutConfig(conversation=SamplingConfig(max_new_tokens=48), feedback=SamplingConfig(max_new_tokens=64),
                        generation_batch_size=args.prompts)

    def alone() -> tuple[float, dict]:
        start = time.perf_counter()
        contexts = [conversation.encode(conversation_messages("", r.prompt)) for r in records]
        c0 = conversation.generate(contexts, cfg.conversation, cfg.generation_batch_size)
        contexts = [feedback.encode(feedback_messages("", r.prompt, t.text)) for r, t in zip(records, c0)]
        feedback.generate(contexts, cfg.feedback, cfg.generation_batch_size)
        return time.perf_counter() - start, {}

    def rollout(rate: float) -> tuple[float, dict]:
        protocol.parse_feedback = ForcedVerdicts(rate)
        timer = StageTimer()
        start = time.perf_counter()
        episodes = protocol.run_episodes(conversation, feedback, records, cfg, timer=timer)
        seconds = time.perf_counter() - start
        revised = sum(e.num_revisions for e in episodes) / len(episodes)
        return seconds, {**timer.durations, "revised_share": revised}

    variants = {"c0 + f0 alone": alone}
    variants.update({f"rollout, {int(100 * r)} % triggered": (lambda r=r: rollout(r)) for r in RATES})
    samples: dict[str, list[tuple[float, dict]]] = {name: [] for name in variants}
    original = protocol.parse_feedback
    payload = {"machine": machine(), "uptime_before": uptime(), "args": vars(args)}
    try:
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, fn in variants.items():
                torch.manual_seed(0)  # identical c0 and f0 tokens in every variant
                samples[name].append(fn())
    finally:
        protocol.parse_feedback = original
    base = median(s for s, _ in samples["c0 + f0 alone"][1:])
    rows, results = [], {}
    for name, runs in samples.items():
        kept = runs[1:]
        seconds = median(s for s, _ in kept)
        stages = {k: median(d.get(k, 0.0) for _, d in kept) for k in kept[-1][1]}
        results[name] = {"seconds": seconds, "ratio_to_c0_f0": seconds / base, "stages": stages,
                         "all_s": [s for s, _ in runs]}
        rows.append([name, seconds, f"{seconds / base:.2f}x", stages.get("rollout/c0", ""),
                     stages.get("rollout/feedback", ""), stages.get("rollout/revision", ""),
                     stages.get("revised_share", "")])
    print(f"\n## adaptivity ({args.size}, {args.prompts} prompts, {args.repeats} repeats, medians)\n")
    print(table(["variant", "s", "vs c0+f0", "c0", "feedback", "revision", "revised share"], rows))
    payload.update({"results": results, "uptime_after": uptime()})
    print(f"\n{payload['uptime_before']}\n{payload['uptime_after']}")
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    main()
