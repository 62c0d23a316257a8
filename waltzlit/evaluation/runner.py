"""``evaluate``: every configured mode over every evaluation set, then the report files.

Order of work per mode, in chunks of ``rollout.generation_batch_size`` prompts (so the progress
bar moves and memory stays bounded): generate -> judge -> score. The baselines that start from
the conversation agent's first answer (alone, safeguard, oracle) share one c0 per prompt and agent
pair, generated once, so their rows differ only by what the mode does with it (the paper's rows 2
and 6 are built on row 1's responses). Each chunk of each mode is seeded from (seed, mode, chunk),
so a mode's numbers do not depend on which other modes ran.

Files in ``output_dir``: ``results.json``, ``table.md``, ``pareto.png``,
``transcripts/<mode>.jsonl`` and ``tensorboard/``.
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from waltzlit.deploy.pipeline import TwoAgentSystem
from waltzlit.evaluation.config import EvalConfig, ModeSpec
from waltzlit.evaluation.modes import (
    Outcome,
    answer_alone,
    apply_safeguard,
    collaborate,
    judge_outcomes,
    mode_seed,
    oracle_revise,
    seed_everything,
)
from waltzlit.evaluation.plot import ParetoPoint, write_pareto_png
from waltzlit.evaluation.report import (
    EvalResult,
    score_outcome,
    summarize,
    table1_markdown,
    transcript_row,
    write_json,
    write_jsonl,
    write_tensorboard,
)
from waltzlit.judges.base import Judge
from waltzlit.judges.cache import CachedJudge
from waltzlit.types import PromptRecord

log = logging.getLogger(__name__)


def set_name(source) -> str:
    """Column name of an evaluation set: its tag, else kind[/subset][:data types]."""
    if source.tag:
        return source.tag
    name = source.name + (f"/{source.subset}" if source.subset else "")
    return name + (f":{'+'.join(source.data_types)}" if source.data_types else "")


def load_eval_sets(cfg: EvalConfig) -> list[tuple[str, list[PromptRecord]]]:
    """(unique name, records) per evaluation set, sampled with ``cfg.seed``."""
    from waltzlit.data.sources import load_prompt_source

    sets, used = [], set()
    for source in cfg.eval_sets:
        name, suffix = set_name(source), 2
        while name in used:
            name, suffix = f"{set_name(source)}-{suffix}", suffix + 1
        used.add(name)
        sets.append((name, load_prompt_source(source, seed=cfg.seed)))
    return sets


class _LogProgress:
    """The bar as log lines when stderr is not a terminal (a log file, CI, ``nohup``): one line as each
    mode starts and one at the end, instead of a bar redrawn with carriage returns."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.desc, self.started = total, 0, "evaluate", time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._line()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._line()

    def update(self, n: int) -> None:
        self.n += n

    def _line(self) -> None:
        log.info("%s: %d/%d prompts, %.0f s", self.desc, self.n, self.total, time.perf_counter() - self.started)


def _progress(total: int, enabled: bool):
    import sys

    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return _LogProgress(total)
    return tqdm(total=total, desc="evaluate", unit="prompt", disable=not enabled, dynamic_ncols=True)


class _Runner:
    """State of one evaluation: loaded systems and the shared, judged c0 answers."""

    def __init__(self, cfg: EvalConfig, judge: Judge, guard: Judge, systems: dict[str, TwoAgentSystem],
                 load: Callable[[str], TwoAgentSystem]) -> None:
        self.cfg, self.judge, self.guard, self.systems, self.load = cfg, judge, guard, systems, load
        self.given = set(systems)
        self.c0: dict[tuple[str, int], Outcome] = {}
        self.judge_errors = 0
        self.agent_info: dict[str, dict] = {}

    def system(self, key: str) -> TwoAgentSystem:
        if key not in self.systems:
            self.systems[key] = self.load(key)
        if key not in self.agent_info:
            s = self.systems[key]
            self.agent_info[key] = {"source": asdict(getattr(self.cfg, key)) if getattr(self.cfg, key) else None,
                                    "device": str(s.conversation.device),
                                    "conversation_model": type(s.conversation.model).__name__,
                                    "feedback_model": type(s.feedback.model).__name__ if s.feedback else None}
        return self.systems[key]

    def release(self, keep: set[str]) -> None:
        """Unload agent pairs that no remaining mode needs (two 8B pairs rarely fit one GPU with the judges)."""
        for key in [k for k in self.systems if k not in keep and k not in self.given]:
            del self.systems[key]
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def first_answers(self, key: str, start: int, records: list[PromptRecord]) -> list[Outcome]:
        """Judged c0 of ``records`` (global positions ``start``...) for agent pair ``key``, generated once."""
        if (key, start) not in self.c0:
            seed_everything(mode_seed(self.cfg.seed, f"c0/{key}/{start}"))
            outcomes = answer_alone(self.system(key), records)
            self.judge_errors += judge_outcomes(self.judge, outcomes)
            for offset, outcome in enumerate(outcomes):
                self.c0[(key, start + offset)] = outcome
        # Copies, so that no mode's changes reach another mode's outcomes.
        return [replace(self.c0[(key, start + i)], responses=list(self.c0[(key, start + i)].responses),
                        verdicts=list(self.c0[(key, start + i)].verdicts), intervened=None)
                for i in range(len(records))]

    def run_chunk(self, mode: ModeSpec, start: int, records: list[PromptRecord]) -> list[Outcome]:
        key = mode.agent_key
        if mode.name in ("alone", "safeguard", "oracle"):
            base = self.first_answers(key, start, records)
            if mode.name == "alone":
                return base
            if mode.name == "safeguard":
                outcomes = apply_safeguard(base, self.guard, self.cfg.safeguard)
            else:
                seed_everything(mode_seed(self.cfg.seed, f"{mode.key}/{start}"))
                outcomes = oracle_revise(self.system(key), base, self.cfg.oracle)
        else:
            seed_everything(mode_seed(self.cfg.seed, f"{mode.key}/{start}"))
            outcomes = collaborate(self.system(key), records)
        self.judge_errors += judge_outcomes(self.judge, outcomes)
        return outcomes


def evaluate(
    cfg: EvalConfig,
    judge: Judge | None = None,
    guard: Judge | None = None,
    systems: dict[str, TwoAgentSystem] | None = None,
    device: str = "auto",
) -> EvalResult:
    """Run ``cfg.modes`` over ``cfg.eval_sets`` and write the report files to ``cfg.output_dir``.

    Args:
        judge: scores final responses (paper: WildGuard); None takes the rule judge.
        guard: the safeguard's classifier (paper: Llama Guard 4); None reuses the judge.
        systems: already built agent pairs by key ("base", "trained"); missing ones are loaded
            from ``cfg.base`` / ``cfg.trained``.
    """
    from waltzlit.deploy.load import load_system
    from waltzlit.judges.rule import RuleJudge

    judge = judge or RuleJudge()
    # Repeated (prompt, response) pairs -- shared c0s, identical refusals -- are judged once.
    cached_judge = judge if isinstance(judge, CachedJudge) else CachedJudge(judge)
    guard = cached_judge if guard is None or guard is judge else guard

    def load(key: str) -> TwoAgentSystem:
        return load_system(getattr(cfg, key), cfg.rollout, device=device)

    runner = _Runner(cfg, cached_judge, guard, dict(systems or {}), load)
    eval_sets = load_eval_sets(cfg)
    items = [(name, record) for name, records in eval_sets for record in records]
    records = [record for _, record in items]
    set_names = [name for name, _ in eval_sets]
    chunk = cfg.rollout.generation_batch_size
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    summaries, files = [], {}
    with _progress(len(records) * len(cfg.modes), cfg.progress) as bar:
        for index, mode in enumerate(cfg.modes):
            runner.release({m.agent_key for m in cfg.modes[index:]})
            bar.set_description(f"evaluate [{mode.key}]")
            began, errors_before, outcomes = time.perf_counter(), runner.judge_errors, []
            for start in range(0, len(records), chunk):
                outcomes += runner.run_chunk(mode, start, records[start : start + chunk])
                bar.update(len(records[start : start + chunk]))
            scores = [score_outcome(name, o) for (name, _), o in zip(items, outcomes)]
            summaries.append(summarize(
                mode.key, mode.row_label, mode.agent_key, scores, set_names,
                bootstrap_resamples=cfg.bootstrap_resamples, bootstrap_seed=cfg.seed,
                judge_parse_errors=runner.judge_errors - errors_before, seconds=time.perf_counter() - began,
            ))
            path = out / "transcripts" / f"{mode.key}.jsonl"
            write_jsonl(path, [transcript_row(mode.key, name, o) for (name, _), o in zip(items, outcomes)])
            files[f"transcripts/{mode.key}"] = str(path)

    settings = run_settings(cfg, judge, guard, eval_sets, runner.agent_info)
    table = table1_markdown(summaries, title="Table 1 layout")
    extra = {}
    if cfg.capability is not None:
        from waltzlit.evaluation.capability import capability_markdown, run_capability

        keys = [k for k in cfg.capability.agents if getattr(cfg, k) is not None or k in runner.given]
        systems = {key: runner.system(key) for key in keys}
        extra["capability"] = run_capability(cfg.capability, systems)
        table += "\n" + capability_markdown(extra["capability"], {"base": "Base (untrained)", "trained": "Trained",
                                                                   "single_rl": "Single-model RL"})
    (out / "table.md").write_text(table)
    write_json(out / "results.json", summaries, settings, extra)
    files.update(table=str(out / "table.md"), json=str(out / "results.json"))
    points = [ParetoPoint(s.label, s.orr_avg, s.asr_avg) for s in summaries if None not in (s.asr_avg, s.orr_avg)]
    if points:
        backend = write_pareto_png(points, out / "pareto.png")
        files["plot"] = str(out / "pareto.png")
        log.info("pareto plot drawn with %s", backend)
    else:
        log.warning("no mode has both an ASR and an ORR (need harmful and benign prompts); no plot written")
    write_tensorboard(out / "tensorboard", summaries, table, extra.get("capability"))
    files["tensorboard"] = str(out / "tensorboard")
    return EvalResult(summaries=summaries, settings=settings, files=files, table=table)


def _describe(obj) -> dict:
    """Class path and public attributes of a judge, for the record (no model objects)."""
    simple = (str, int, float, bool, type(None), list, tuple)
    attributes = {k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, simple)}
    described = {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "attributes": attributes}
    if isinstance(getattr(obj, "inner", None), Judge):  # a CachedJudge: say what it wraps
        described["inner"] = _describe(obj.inner)
    return described


def run_settings(cfg: EvalConfig, judge: Judge, guard: Judge, eval_sets, agents: dict[str, dict]) -> dict:
    """Everything that determines the numbers: config, decoding, seeds, judge, agents, versions."""
    import transformers

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "generation": {"conversation": asdict(cfg.rollout.conversation), "feedback": asdict(cfg.rollout.feedback),
                       "t_max": cfg.rollout.max_feedback_rounds, "batch_size": cfg.rollout.generation_batch_size},
        "seed": cfg.seed,
        "judge": _describe(judge),
        "guard": _describe(guard),
        "eval_sets": {name: {"num_prompts": len(records), "harmful": sum(r.prompt_harmful for r in records)}
                      for name, records in eval_sets},
        "agents": agents,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
