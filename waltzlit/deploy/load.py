"""Loading an agent pair for evaluation and deployment: exported folders, checkpoints, configs.

Three sources (see :class:`AgentsSource`):

- an exported folder (``export_agents``): full Hugging Face models, or LoRA adapters put back on
  their base with peft and merged (inference then costs what the base costs);
- a fit config: the agents exactly as training builds them before RL (the same
  ``agents.build.build_agents`` call, so a tiny config's warm start and seeds are honoured, without
  the training module or reference copies) -- the "untrained" agents;
- a config + a WaltzModule checkpoint: the same build, then the checkpoint's policy weights. The
  checkpoint is read with ``torch.load(weights_only=True)``: no code from the file is run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, is_dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from waltzlit.agents.agent import Agent
from waltzlit.agents.build import MEMORY_MODES, ROLES, BuiltAgents, build_agents
from waltzlit.agents.loading import load_causal_lm, load_tokenizer, peft_wrapping
from waltzlit.config import AgentConfig, RolloutConfig
from waltzlit.deploy.pipeline import TwoAgentSystem

log = logging.getLogger(__name__)


@dataclass
class AgentsSource:
    """Where one pair of agents (conversation + feedback) comes from. Set one of:

    - ``exported``: a folder written by ``export_agents`` (``<dir>/conversation``,
      ``<dir>/feedback``; each a full model, or a LoRA adapter whose base comes from ``config``
      or the adapter's ``base_model_name_or_path``), or a run folder holding ``agents/``;
    - ``config`` alone: the agents as configured for training, before any RL ("untrained"; a tiny
      config's behaviour-cloning warm start still runs, since that is its initial policy);
    - ``checkpoint`` (+ optional ``config``): a WaltzModule checkpoint such as ``last.ckpt``; the
      agents are built from ``config`` (default: the ``config.yaml`` LightningCLI saved beside or
      above the checkpoint) and its policy weights are loaded (``torch.load(weights_only=True)``).
    """

    exported: str | None = None
    """Folder from ``export_agents`` or a run folder that contains ``agents/``."""
    config: str | None = None
    """A fit YAML (e.g. conf/tiny.yaml or a run's config.yaml); its model.conversation/feedback are used."""
    checkpoint: str | None = None
    """A WaltzModule checkpoint whose policy weights replace the freshly built ones."""

    def __post_init__(self) -> None:
        if self.exported is None and self.config is None and self.checkpoint is None:
            raise ValueError("agents: set `exported`, `config` or `checkpoint`")
        if self.exported is not None and self.checkpoint is not None:
            raise ValueError("agents: `exported` and `checkpoint` are alternatives; set one")


def resolve_device(device: str) -> torch.device:
    """"auto" -> the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_system(source: AgentsSource, rollout: RolloutConfig, device: str = "auto") -> TwoAgentSystem:
    """Both agents of ``source`` on ``device``, wrapped as a deployed system with ``rollout``."""
    if source.exported is not None:
        agents = _exported_agents(Path(source.exported), source.config)
    else:
        config = source.config or str(find_run_config(Path(source.checkpoint)))
        runs = [Path(config).parent] + ([Path(source.checkpoint).parent.parent] if source.checkpoint else [])
        built = build_from_config(config, system_prompts=exported_prompts([run / "agents" for run in runs]))
        if source.checkpoint is not None:
            load_policy_weights(built, source.checkpoint)
        agents = dict(built.agents)
    target = resolve_device(device)
    for agent in agents.values():
        if not (getattr(agent.model, "is_loaded_in_4bit", False) or getattr(agent.model, "is_loaded_in_8bit", False)):
            agent.model.to(target)  # bitsandbytes models were placed when loaded and refuse .to()
        agent.model.eval()
        agent.reference = None  # inference never needs the reference policy
        agent.max_prompt_tokens = prompt_limit(agent, rollout)
    return TwoAgentSystem(agents["conversation"], agents.get("feedback"), rollout)


def prompt_limit(agent: Agent, rollout: RolloutConfig) -> int:
    """Context tokens an agent may read: ``rollout.max_prompt_tokens``, but never more than its
    model's positions leave beside the longest answer (a longer context would fail or wrap)."""
    positions = getattr(getattr(agent.model, "config", None), "max_position_embeddings", None)
    sampling = rollout.conversation if agent.role == "conversation" else rollout.feedback
    if not positions:
        return rollout.max_prompt_tokens
    return max(1, min(rollout.max_prompt_tokens, positions - sampling.max_new_tokens))


def exported_prompts(folders: list[Path]) -> dict[str, str]:
    """{role: system prompt} exported in ``<folder>/<role>/system_prompt.txt`` (first folder wins).

    A config that leaves ``system_prompt`` unset means "the built-in default", and that default may
    have changed since the run trained; the exported file holds the text the agent was trained
    with. Untrained agents built from the run's config get it too, so the baselines are prompted
    (and, for tiny models, warm-started) exactly like the trained agents.
    """
    prompts: dict[str, str] = {}
    for folder in dict.fromkeys(folders):
        for role in ROLES:
            saved = folder / role / "system_prompt.txt"
            if role not in prompts and saved.is_file():
                prompts[role] = saved.read_text()
    return prompts


# ----------------------------------------------------------------------------- configs and checkpoints
def _parse_section(raw: dict, key: str, cls, skip: set[str] = frozenset()) -> dict:
    """Keyword arguments of ``cls`` from section ``key`` of a fit YAML, checked by jsonargparse."""
    from jsonargparse import ArgumentParser

    section = {k: v for k, v in dict(raw.get(key) or {}).items() if k not in skip}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, key, skip=set(skip), instantiate=False)
    return dict(vars(parser.instantiate(parser.parse_object({key: section}))[key]))


@dataclass
class AgentsSection:
    """The part of a fit YAML's ``model`` section that decides how the agents are built."""

    conversation: AgentConfig
    feedback: AgentConfig | None = None
    memory_mode: str = "separate"


def agents_section(config_path: str | Path) -> AgentsSection:
    """The agents' configuration from a fit YAML's ``model`` section (the other keys -- reward,
    algorithm, judge, ... -- are training settings, not read here).

    Parsed with the same jsonargparse machinery LightningCLI uses, so a bad key fails with its name.
    """
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    model = raw.get("model")
    if not model:
        raise ValueError(f"{config_path}: no `model` section with the agents' configuration")
    wanted = {k: v for k, v in dict(model).items() if k in ("conversation", "feedback", "memory_mode")}
    section = AgentsSection(**_parse_section({"model": wanted}, "model", AgentsSection))
    if section.memory_mode not in MEMORY_MODES:
        raise ValueError(f"model.memory_mode: unknown {section.memory_mode!r}; allowed values: {', '.join(MEMORY_MODES)}")
    return section


def training_records(config_path: str | Path):
    """The training prompt pool of a fit YAML's ``data`` section (what a warm start trains on)."""
    from waltzlit.data.datamodule import PromptDataModule

    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    datamodule = PromptDataModule(**_parse_section(raw, "data", PromptDataModule))
    datamodule.setup("fit")
    return datamodule.train_records()


def build_from_config(config_path: str | Path, lora: bool = True, system_prompts: dict[str, str] | None = None) -> BuiltAgents:
    """The agents of a fit YAML as training builds them before RL, for inference (no references).

    Args:
        lora: False builds the bare bases of LoRA agents, for exported adapters.
        system_prompts: {role: text} replacing the config's system prompts (see :func:`exported_prompts`).
    """
    section = agents_section(config_path)
    configs = {"conversation": section.conversation} | ({"feedback": section.feedback} if section.feedback else {})
    for role, text in (system_prompts or {}).items():
        if role in configs:
            if configs[role].system_prompt not in (None, text):
                log.warning("%s agent: the run exported a system prompt that differs from its config; using the "
                            "exported one", role)
            configs[role] = replace(configs[role], system_prompt=text)
    # Inference samples from the model itself: a merged (possibly rounded) sampling copy exists to
    # spare LoRA bookkeeping during training, and would make the untrained agents decode in another
    # precision than exported ones.
    configs = {role: replace(cfg, merged_lora_sampler=False, sampler_dtype="same") for role, cfg in configs.items()}
    memory_mode = section.memory_mode
    if not lora:
        # Bare bases: one per agent, whatever memory mode the run trained in (a shared base
        # carries two adapters, which are merged into two separate models for inference).
        configs = {role: replace(cfg, lora=None, load_in_4bit=False) for role, cfg in configs.items()}
        memory_mode = "separate"
    records: list = []

    def warm_start_records():
        # Training warm-starts on the datamodule's pool; the same pool gives the same initial policy.
        if not records:
            records.extend(training_records(config_path))
        return records

    return build_agents(configs, memory_mode, needs_reference=False, max_prompt_tokens=RolloutConfig().max_prompt_tokens,
                        warm_start_records=warm_start_records)


def find_run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` LightningCLI saved in the run folder (``<run>/checkpoints/last.ckpt``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"no config.yaml beside or above {checkpoint}; set `config` to the run's fit YAML")


def _checkpoint_globals() -> list[type]:
    """The dataclasses a WaltzModule checkpoint's hyper-parameters hold, allowed for weights_only."""
    import waltzlit.config as config_module
    from waltzlit.data.sources import PromptSourceConfig

    classes = [v for v in vars(config_module).values() if isinstance(v, type) and is_dataclass(v)]
    return [*classes, PromptSourceConfig]


def read_checkpoint_state(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict``, loaded with ``weights_only=True`` (our config dataclasses,
    stored as hyper-parameters, are the only classes allowed besides tensors and primitives)."""
    with torch.serialization.safe_globals(_checkpoint_globals()):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "state_dict" not in payload:
        raise ValueError(f"{checkpoint}: not a Lightning checkpoint (no state_dict)")
    return payload["state_dict"]


def load_policy_weights(built: BuiltAgents, checkpoint: str | Path) -> None:
    """Copy the checkpoint's ``policies.*`` weights into ``built.policies`` (strict: every key must match)."""
    state = read_checkpoint_state(checkpoint)
    policies = {k[len("policies.") :]: v for k, v in state.items() if k.startswith("policies.")}
    if not policies:
        raise ValueError(f"{checkpoint}: no policies.* weights; was it written by WaltzModule?")
    built.policies.load_state_dict(policies, strict=True)
    log.info("loaded %d policy tensors from %s", len(policies), checkpoint)


# ----------------------------------------------------------------------------- exported folders
def exported_root(path: Path) -> Path:
    """The folder holding ``conversation/`` (and ``feedback/`` unless the conversation agent was
    trained alone): ``path`` itself or ``path/agents``."""
    for candidate in (path, path / "agents"):
        if (candidate / "conversation").is_dir():
            return candidate
    raise FileNotFoundError(f"{path}: expected conversation/ (and feedback/) folders (from export_agents)")


def _exported_agents(path: Path, config: str | None) -> dict[str, Agent]:
    root = exported_root(path)
    bases: dict[str, nn.Module] | None = None
    agents = {}
    for role in [r for r in ROLES if (root / r).is_dir()]:
        folder = root / role
        tokenizer = load_tokenizer(AgentConfig(model=str(_tokenizer_folder(folder))))
        if (folder / "adapter_config.json").is_file():
            if bases is None and config is not None:
                # The bases as the run built them: same config, same prompts (tiny warm starts).
                built = build_from_config(config, lora=False, system_prompts=exported_prompts([root]))
                bases = {r: a.model for r, a in built.agents.items()}
            model = load_adapter(folder, bases[role] if bases else None, tokenizer)
        else:
            model = load_causal_lm(AgentConfig(model=str(folder), dtype=_saved_dtype(folder)), tokenizer)
        prompt_file = folder / "system_prompt.txt"
        if not prompt_file.is_file():
            raise FileNotFoundError(f"{prompt_file} is missing; export_agents writes it next to the weights")
        agents[role] = Agent(role, model, tokenizer, prompt_file.read_text(), reference=None)
    return agents


def _tokenizer_folder(folder: Path) -> Path | str:
    """Where an exported agent's tokenizer is: its own folder, or -- for an adapter stored without
    one (e.g. adapters committed beside results, where a copy per agent would be wasted) -- the
    adapter's recorded base model."""
    if (folder / "tokenizer_config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return folder
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"{folder}: no tokenizer files and no recorded base model to take them from")
    return base


def _saved_dtype(folder: Path) -> str:
    """The dtype the model was saved in (config.json), as an AgentConfig dtype name."""
    saved = json.loads((folder / "config.json").read_text())
    name = str(saved.get("dtype") or saved.get("torch_dtype") or "float32")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def load_adapter(folder: Path, base: nn.Module | None, tokenizer) -> nn.Module:
    """A LoRA adapter folder on its base, merged. ``base`` None loads the adapter's recorded base."""
    from peft import PeftModel

    if base is None:
        recorded = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not recorded:
            raise ValueError(
                f"{folder} is a LoRA adapter of a randomly initialised base; set `config` to the run's fit "
                "YAML so the base can be rebuilt, or export with merge_lora"
            )
        base = load_causal_lm(AgentConfig(model=recorded), tokenizer)
    with peft_wrapping():
        return PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval()
