"""Configuration of ``python -m waltzlit evaluate`` (and the agent sources of ``chat``/``serve``).

One YAML names the evaluation sets, the modes (the rows of the paper's Table 1), where the
untrained ("base") and trained agents come from, the judge, the safeguard, decoding and seeds.
Choices the paper leaves open are marked UNCONFIRMED with the default taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from waltzlit.config import RolloutConfig
from waltzlit.data.sources import PromptSourceConfig
from waltzlit.deploy.load import AgentsSource  # noqa: F401  (part of the evaluation config)
from waltzlit.evaluation.capability import CapabilityConfig

MODE_NAMES: tuple[str, ...] = ("alone", "safeguard", "collaboration", "oracle", "waltzrl")
"""The five systems of the issue, in Table-1 order (paper rows 1, 2, 5, 6, 7)."""

DEFAULT_MODE_AGENTS: dict[str, str] = {
    "alone": "base",
    "safeguard": "base",
    "collaboration": "base",
    "oracle": "base",
    "waltzrl": "trained",
}
"""Which agent pair each mode runs on by default: the baselines use the untrained agents."""

FEEDBACK_MODES: frozenset[str] = frozenset({"collaboration", "waltzrl"})
"""Modes that run the feedback agent; the others need only a conversation agent."""

DEFAULT_MODE_LABELS: dict[str, str] = {
    "alone": "Baseline response",
    "safeguard": "+ Safeguard",
    "collaboration": "Inference-time collaboration",
    "oracle": "Oracle label-converted feedback",
    "waltzrl": "WaltzRL",
}
"""Row names as printed in the paper's Table 1."""

DEFAULT_REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
"""What the safeguard puts in place of a flagged response (paper: wording UNCONFIRMED)."""


@dataclass
class ModeSpec:
    """One row of the table: a mode run on one agent pair."""

    name: Literal["alone", "safeguard", "collaboration", "oracle", "waltzrl"]
    """alone: c0 only. safeguard: c0, replaced by a refusal when the guard flags it. collaboration
    and waltzrl: the deployed two-agent protocol (method §11). oracle: the judge's labels of c0
    as a fixed template message, then one revision."""
    agents: Literal["base", "trained", "single_rl"] | None = None
    """Agent pair; None takes the mode's default (waltzrl: trained, the rest: base). "single_rl"
    is a conversation agent trained alone (paper rows 3 and 4: ``alone`` / ``safeguard`` on it)."""
    label: str | None = None
    """Row name in the table; None takes the paper's."""

    @property
    def agent_key(self) -> str:
        return self.agents or DEFAULT_MODE_AGENTS[self.name]

    @property
    def row_label(self) -> str:
        return self.label or DEFAULT_MODE_LABELS[self.name]

    @property
    def key(self) -> str:
        """Unique id of the row, used in file names and TensorBoard tags."""
        default = self.agents is None or self.agents == DEFAULT_MODE_AGENTS[self.name]
        return self.name if default else f"{self.name}-{self.agents}"


def _all_modes() -> list[ModeSpec]:
    return [ModeSpec(name) for name in MODE_NAMES]


@dataclass
class OracleConfig:
    """Oracle label-converted feedback (paper Table 1, row 6; template wording UNCONFIRMED)."""

    unsafe_message: str = "avoid unsafe content"
    """Feedback string sent when the judge calls c0 unsafe."""
    overrefuse_message: str = "avoid overrefusal"
    """Feedback string sent when the judge calls c0 an over-refusal."""


@dataclass
class SafeguardConfig:
    """The safeguard baseline (paper §9: Llama Guard 4 checks prompt and response; a flagged
    response is replaced by a refusal)."""

    refusal_text: str = DEFAULT_REFUSAL_TEXT
    """Text that replaces a flagged response (UNCONFIRMED)."""
    check_prompt: bool = True
    """Also flag when the guard calls the prompt unsafe; used only when the guard has a
    ``classify_prompts`` method (LlamaGuardJudge). Other judges check the response only."""


@dataclass
class EvalConfig:
    """Everything one ``evaluate`` run needs; the judge and guard are given to the parser separately
    because they are class_path objects."""

    eval_sets: list[PromptSourceConfig] = field(default_factory=lambda: [PromptSourceConfig(name="builtin")])
    """Evaluation sets; harmful records go to ASR columns, benign ones to ORR columns."""
    modes: list[ModeSpec] = field(default_factory=_all_modes)
    """Rows of the table, in order."""
    base: AgentsSource | None = None
    """Untrained agents (baselines); needed by modes whose agents are "base"."""
    trained: AgentsSource | None = None
    """Trained agents (WaltzRL); needed by modes whose agents are "trained"."""
    single_rl: AgentsSource | None = None
    """A conversation agent trained alone on R_c (``model.feedback: null``); its export holds only
    ``conversation/``, so only the modes without a feedback agent (alone, safeguard, oracle) run on it."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Decoding and protocol; ``max_feedback_rounds`` is T_max (paper: 1)."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    """Oracle-mode messages."""
    safeguard: SafeguardConfig = field(default_factory=SafeguardConfig)
    """Safeguard-mode settings."""
    seed: int = 0
    """Seed of the prompt sampling and of every mode's decoding (each mode reseeds from it)."""
    capability: CapabilityConfig | None = None
    """lm-evaluation-harness tasks on each agent pair's conversation agent (paper Table 2); None: off."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples for the 95 % intervals of ASR avg, ORR avg and F1 (0: no intervals)."""
    output_dir: str = "runs/eval"
    """Where results.json, table.md, pareto.png, transcripts/ and tensorboard/ go."""
    progress: bool = True
    """Show a progress bar during generation."""

    def __post_init__(self) -> None:
        if not self.eval_sets:
            raise ValueError("eval_sets: give at least one evaluation set")
        if not self.modes:
            raise ValueError("modes: give at least one mode")
        if self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples: must be >= 0 (0 turns intervals off), got {self.bootstrap_resamples}")
        keys = [m.key for m in self.modes]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"modes: {duplicates} listed twice; give one a different `agents`")
        for mode in self.modes:
            if getattr(self, mode.agent_key) is None:
                raise ValueError(f"modes: {mode.name} runs on the {mode.agent_key} agents; set `{mode.agent_key}`")
            if mode.agent_key == "single_rl" and mode.name in FEEDBACK_MODES:
                raise ValueError(f"modes: {mode.name} needs a feedback agent; single_rl agents have none "
                                 "(allowed on single_rl: alone, safeguard, oracle)")
