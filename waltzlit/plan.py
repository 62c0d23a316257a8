"""``python -m waltzlit plan --config conf/waltz.yaml [--config conf/strategy/fsdp.yaml] [--trainer.devices=8]``

Prints the estimated memory per device of a training configuration without loading a model
(waltzlit/memory_plan.py): the configuration is parsed exactly as fit parses it (same files, same
overrides, same checks) but nothing is instantiated. Architectures come from model_config, a local
checkpoint's config.json, the Hugging Face cache, or a table of common hub models.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

from waltzlit.cli import WaltzCLI
from waltzlit.cli import main as cli_main
from waltzlit.cli_errors import exit_with
from waltzlit.memory_plan import (
    GIB,
    KNOWN_ARCHITECTURES,
    KNOWN_JUDGE_PARAMETERS,
    AgentPlan,
    Architecture,
    MemoryPlan,
    Workload,
    architecture_from_config,
    estimate,
    normalise_precision,
    smallest_world_size,
)

SHARDED_STRATEGIES = ("FSDP2Strategy", "ModelParallelStrategy")


class _ParseOnlyCLI(WaltzCLI):
    """The training CLI's parser and checks, instantiating nothing (no model is loaded)."""

    def instantiate_classes(self) -> None:
        pass


def _transformers_config(model: str) -> dict | None:
    """The language model's config of a local checkpoint or a cached hub id (a multimodal
    checkpoint's ``text_config``), None when neither is on this machine."""
    local = Path(model) / "config.json"
    try:
        if local.is_file():
            found = json.loads(local.read_text())
        else:  # a hub id already in the local cache
            from transformers import AutoConfig

            found = AutoConfig.from_pretrained(model, local_files_only=True).to_dict()
    except (OSError, ValueError):  # not cached, or not a transformers checkpoint
        return None
    return found.get("text_config", found)


def architecture_of(agent: dict, key: str) -> Architecture:
    """The shape of an agent's model: its ``model_config``, a local or cached config, or the table."""
    if agent.get("model_config"):
        from transformers import AutoConfig

        fields = dict(agent["model_config"])
        return architecture_from_config(AutoConfig.for_model(fields.pop("model_type"), **fields).to_dict())
    model = agent.get("model")
    found = _transformers_config(model) if model else None
    if found:
        return architecture_from_config(found)
    if model in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[model]
    exit_with(f"{key}.model: cannot size {model!r} offline: give a local directory with config.json, or a model "
              f"already in the Hugging Face cache; models known without either: {', '.join(KNOWN_ARCHITECTURES)}",
              prog="python -m waltzlit plan")
    raise AssertionError  # exit_with does not return


def _judge_parameters(judge) -> int:
    """Weights of a local judge model (0 for rule and HTTP judges); looks through wrappers."""
    if not isinstance(judge, dict):
        return 0
    args = judge.get("init_args") or {}
    model = args.get("model")
    if isinstance(model, str):
        if model in KNOWN_JUDGE_PARAMETERS:
            return KNOWN_JUDGE_PARAMETERS[model]
        found = _transformers_config(model)
        return architecture_from_config(found).parameters if found else 0
    return max((_judge_parameters(value) for value in args.values() if isinstance(value, dict)), default=0)


def _sampler_dtype(agent: dict) -> str | None:
    """dtype of the merged LoRA sampling copy (``sampler_dtype: same`` is the agent's), None without one."""
    if not agent.get("merged_lora_sampler"):
        return None
    chosen = agent.get("sampler_dtype", "same")
    return agent.get("dtype", "float32") if chosen == "same" else chosen


def workload_from_config(config: dict) -> Workload:
    """The :class:`Workload` of a parsed ``fit`` configuration (``cli.config.as_dict()``)."""
    model, trainer = config["model"], config["trainer"]
    algorithm = model.get("algorithm") or {}
    overrides = algorithm.get("agent_overrides") or {}
    agents = {}
    for role in ("conversation", "feedback"):
        agent = model.get(role)
        if not agent:
            continue
        settings = {**algorithm, **overrides.get(role, {})}
        lora = agent.get("lora")
        agents[role] = AgentPlan(
            architecture=architecture_of(agent, f"model.{role}"),
            dtype=agent.get("dtype", "float32"),
            lora_r=lora["r"] if lora else None,
            lora_targets=(lora or {}).get("target_modules", "all-linear"),
            load_in_4bit=bool(agent.get("load_in_4bit")),
            needs_reference=float(settings.get("kl_coef", 0.0)) > 0,
            merged_sampler_dtype=_sampler_dtype(agent),
            critic=settings.get("advantage_estimator") == "gae",
            trained=not (role == "conversation" and (model.get("schedule") or {}).get("freeze_conversation")),
        )
    strategy = trainer.get("strategy")
    strategy_name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    devices = trainer.get("devices")
    if isinstance(devices, list):
        devices = len(devices)
    devices = int(devices) if str(devices).isdigit() else 1  # "auto" and -1 count as one device
    rollout = model.get("rollout") or {}
    world_size = max(1, devices) * int(trainer.get("num_nodes") or 1)
    rows = (config.get("data") or {}).get("batch_size", 32) * int(algorithm.get("samples_per_prompt", 1)) * max(
        1, int(algorithm.get("feedback_samples_per_response", 1)))
    return Workload(
        agents=agents,
        precision=normalise_precision(trainer.get("precision")),
        memory_mode=model.get("memory_mode", "separate"),
        world_size=world_size,
        sharded=any(name in strategy_name for name in SHARDED_STRATEGIES),
        generation_batch_size=rollout.get("generation_batch_size", 32),
        rollout_rows=rows,
        max_prompt_tokens=rollout.get("max_prompt_tokens", 4096),
        max_new_tokens=max((rollout.get(r) or {}).get("max_new_tokens", 512) for r in ("conversation", "feedback")),
        micro_batch_size=algorithm.get("micro_batch_size", 4),
        gradient_checkpointing=any(bool((model.get(r) or {}).get("gradient_checkpointing")) for r in agents),
        judge_parameters=_judge_parameters(model.get("judge")),
    )


def format_plan(plan: MemoryPlan, work: Workload, device_gib: float) -> str:
    """The table ``plan`` prints."""
    layout = f"FSDP2 over {work.world_size} ranks" if work.sharded else f"{work.world_size} device(s), not sharded"
    names = {r: (f"LoRA r={a.lora_r}" + (", 4-bit base" if a.load_in_4bit else "")) if a.lora_r else "full fine-tuning"
             for r, a in work.agents.items()}
    lines = [(f"precision {work.precision}, memory_mode {work.memory_mode}, {layout}, "
             f"activation checkpointing {'on' if work.gradient_checkpointing else 'off'}"),
             "agents: " + "; ".join(f"{r} {a.architecture.parameters / 1e9:.2f}B ({names[r]})" for r, a in work.agents.items()),
             "", f"{'phase':<11} {'part (per device)':<52} {'GiB':>8}"]
    for phase in ("static", "generation", "update"):
        for p, name, nbytes in plan.parts:
            if p == phase:
                lines.append(f"{phase:<11} {name:<52} {nbytes / GIB:>8.2f}")
    static, gen, upd = (plan.total(p) / GIB for p in ("static", "generation", "update"))
    lines += ["", f"peak = static {static:.1f} + max(generation {gen:.1f}, update {upd:.1f}) = {plan.peak_gib:.1f} GiB per device"]
    verdict = "fits" if plan.peak_gib <= device_gib else "does NOT fit"
    lines.append(f"{verdict} a {device_gib:g} GiB device ({plan.peak_gib / device_gib:.0%} of it)")
    needed = smallest_world_size(work, device_gib * GIB)
    if needed is None:
        lines.append(f"no FSDP2 world size up to 1024 fits {device_gib:g} GiB (per-rank parts alone exceed it)")
    elif needed != work.world_size and not (needed == 1 and plan.peak_gib <= device_gib):
        lines.append(f"smallest FSDP2 world size that fits {device_gib:g} GiB: {needed} "
                     f"(--config conf/strategy/fsdp.yaml --trainer.devices={needed}, or devices x num_nodes)")
    return "\n".join(lines)


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m waltzlit plan", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    parser.add_argument("--device-memory-gib", type=float, default=80.0, help="memory of one device (default 80)")
    own, rest = parser.parse_known_args(args)
    if not rest or "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nEvery other argument is a fit argument: --config FILE (repeatable), --trainer.devices=N, --model.X=...")
        return 0
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # no "Seed set to"
    with warnings.catch_warnings():  # args given on purpose: LightningCLI warns when sys.argv is set too
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        cli = cli_main(rest, run=False, cli_class=_ParseOnlyCLI)
    work = workload_from_config(cli.config.as_dict())
    print(format_plan(estimate(work), work, own.device_memory_gib))
    return 0

