"""General capability of the conversation agents through lm-evaluation-harness (paper Table 2).

The paper checks that safety training costs no capability: IFEval, GPQA Diamond, MMLU and
TruthfulQA MC1 with lm-evaluation-harness defaults, on the conversation agent alone. Here each
configured agent pair's conversation agent, as ``evaluate`` already loaded it (adapters merged),
is wrapped in lm-eval's own Hugging Face model class (``HFLM(pretrained=<the loaded model>)``: no
second copy) and ``lm_eval.simple_evaluate`` runs the configured tasks. ``lm-eval`` is an optional
extra (``pip install -e ".[capability]"``), imported only here.

Tasks are lm-eval task names; ``include_path`` adds folders of task YAMLs (local tasks on local
data run offline). The shipped ``waltzlit/assets/lm_eval_tasks`` holds one such task,
``waltzlit_general_mc``; its data file is resolved against that folder.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from waltzlit.assets import ASSETS_DIR

log = logging.getLogger(__name__)

SHIPPED_TASKS = ASSETS_DIR / "lm_eval_tasks"
"""Task YAMLs (and their data) that ship with waltzlit and run offline."""


@dataclass
class CapabilityConfig:
    """lm-evaluation-harness tasks on each agent pair's conversation agent (paper Table 2)."""

    tasks: list[str] = field(default_factory=lambda: ["waltzlit_general_mc"])
    """lm-eval task names (paper: ifeval, gpqa_diamond_zeroshot, mmlu, truthfulqa_mc1; hub needed)."""
    agents: list[str] = field(default_factory=lambda: ["base", "trained", "single_rl"])
    """Which configured agent pairs to test (those not configured are skipped)."""
    num_fewshot: int | None = None
    """Few-shot examples; None keeps each task's default (lm-eval's defaults, as in the paper)."""
    limit: float | None = None
    """Documents per task (an int) or a fraction (< 1); None runs every document."""
    batch_size: int = 8
    """lm-eval batch size."""
    include_path: list[str] = field(default_factory=list)
    """Extra folders of task YAMLs; the shipped folder is always included."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("capability.tasks: give at least one lm-eval task name")
        bad = sorted(set(self.agents) - {"base", "trained", "single_rl"})
        if bad:
            raise ValueError(f"capability.agents: unknown {bad}; allowed values: base, trained, single_rl")
        if self.batch_size < 1:
            raise ValueError(f"capability.batch_size: must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"capability.limit: must be > 0 or null, got {self.limit}")


def _shipped_task_folder(scratch: Path) -> Path:
    """The shipped task YAMLs with their data files made absolute (lm-eval reads them from the cwd)."""
    import yaml

    for source in SHIPPED_TASKS.glob("*.yaml"):
        spec = yaml.safe_load(source.read_text())
        files = spec.get("dataset_kwargs", {}).get("data_files", {})
        for split, name in list(files.items()):
            files[split] = str(SHIPPED_TASKS / name)
        (scratch / source.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    return scratch


def run_capability(cfg: CapabilityConfig, systems: dict) -> dict:
    """``{"lm_eval_version", "settings", "results": {agents: {task: {metric: value}}}, "versions"}``.

    Args:
        systems: agent key -> a deployed system (its ``conversation.model`` and ``.tokenizer``).
    """
    try:
        import lm_eval
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError('capability needs lm-evaluation-harness: pip install -e ".[capability]"') from err

    out: dict = {"lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "settings": {
        "tasks": cfg.tasks, "num_fewshot": cfg.num_fewshot, "limit": cfg.limit, "batch_size": cfg.batch_size},
        "results": {}, "versions": {}, "n_samples": {}}
    with tempfile.TemporaryDirectory() as scratch:
        manager = TaskManager(include_path=[str(_shipped_task_folder(Path(scratch))), *cfg.include_path])
        for key, system in systems.items():
            agent = system.conversation
            model = HFLM(pretrained=agent.model, tokenizer=agent.tokenizer, batch_size=cfg.batch_size,
                         device=str(agent.device))
            log.info("capability: %s conversation agent on %s", key, ", ".join(cfg.tasks))
            result = simple_evaluate(model=model, tasks=list(cfg.tasks), task_manager=manager,
                                     num_fewshot=cfg.num_fewshot, limit=cfg.limit, log_samples=False)
            out["results"][key] = {task: {name: value for name, value in metrics.items() if name not in ("name", "alias")}
                                   for task, metrics in result["results"].items()}
            out["versions"].update({task: str(v) for task, v in (result.get("versions") or {}).items()})
            out["n_samples"].update({task: n.get("effective", n) if isinstance(n, dict) else n
                                     for task, n in (result.get("n-samples") or {}).items()})
    return out


def capability_markdown(report: dict, labels: dict[str, str]) -> str:
    """The Table 2 layout: one row per agent pair's conversation agent, one column per task metric
    (value ± stderr, in %)."""
    results = report["results"]
    columns: list[tuple[str, str]] = []
    for per_task in results.values():
        for task, metrics in per_task.items():
            for name in metrics:
                # lm-eval names a metric "metric,filter"; other keys (sample_len: a count) are not scores
                if "," in name and "stderr" not in name and (task, name) not in columns:
                    columns.append((task, name))
    lines = ["### Table 2 layout: general capability (lm-evaluation-harness " + report["lm_eval_version"] + ")", "",
             f"Conversation agent alone; tasks {', '.join(report['settings']['tasks'])}; num_fewshot "
             f"{report['settings']['num_fewshot']} (None: task default); limit {report['settings']['limit']}; "
             f"documents per task {report['n_samples']}; value ± stderr in %.", "",
             "| Agents | " + " | ".join(f"{task} {name.split(',')[0]}" for task, name in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for key, per_task in results.items():
        cells = []
        for task, name in columns:
            value = per_task.get(task, {}).get(name)
            stderr = per_task.get(task, {}).get(name.replace(",", "_stderr,", 1))
            if not isinstance(value, (int, float)):
                cells.append("–")
            else:
                cells.append(f"{100 * value:.1f}" + (f" ± {100 * stderr:.1f}" if isinstance(stderr, (int, float)) else ""))
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
