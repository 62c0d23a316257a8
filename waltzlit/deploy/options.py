"""Options shared by ``chat`` and ``serve``: which agents, how they decode, where they run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from waltzlit.config import RolloutConfig
from waltzlit.deploy.load import AgentsSource


@dataclass
class DeployConfig:
    """The deployed two-agent system (method §11)."""

    agents: AgentsSource
    """Where both agents come from: an exported folder, a fit config, or a checkpoint (+ config)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Decoding of both agents and T_max (``max_feedback_rounds``; paper: 1)."""
    device: str = "auto"
    """auto (first GPU if any), cpu, cuda, cuda:1 ..."""
    seed: int = 0
    """Seed of the sampling at start-up."""


def deploy_parser(prog: str, description: str):
    """A jsonargparse parser with ``--config`` and the :class:`DeployConfig` options."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with the options below.")
    parser.add_class_arguments(DeployConfig, instantiate=False)
    return parser


def deploy_config(namespace) -> DeployConfig:
    """The :class:`DeployConfig` of an instantiated namespace from :func:`deploy_parser`."""
    return DeployConfig(**{f.name: namespace[f.name] for f in fields(DeployConfig)})


def load_deployed(cfg: DeployConfig):
    """The :class:`~waltzlit.deploy.pipeline.TwoAgentSystem` that ``cfg`` describes, seeded."""
    import torch

    from waltzlit.deploy.load import load_system

    torch.manual_seed(cfg.seed)
    return load_system(cfg.agents, cfg.rollout, device=cfg.device)
