"""Configuration dataclasses. LightningCLI reads them from ``WaltzModule.__init__``'s signature.

Every field has an attribute docstring (shown by ``--help``) and is checked in ``__post_init__``
so that a bad value fails before any model is loaded, with a message naming the key. Choices that
the paper leaves open are marked UNCONFIRMED with the default taken.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from waltzlit.algorithms.kl import KL_ESTIMATORS
from waltzlit.algorithms.policy_losses import AGGREGATIONS


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")


@dataclass
class LoRAConfig:
    """LoRA adapters via peft; only the adapters are trained."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or peft's "all-linear"."""

    def __post_init__(self) -> None:
        _check(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class WarmStartConfig:
    """Behaviour cloning on templated demonstrations before RL, for randomly initialised models.

    A random tiny model never writes valid feedback JSON, so every reward would be equal and RL
    would have no signal. A few hundred teacher-forced steps on demonstrations built from the prompt
    pool give it the output format while keeping its choices noisy. Meant for CPU runs and tests;
    real checkpoints leave this unset.
    """

    steps: int = 200
    """Optimizer steps of teacher forcing."""
    lr: float = 3e-3
    """AdamW learning rate."""
    batch_size: int = 16
    """Demonstrations per step."""
    label_noise: float = 0.3
    """Probability that a demonstration's choice (refuse or comply; the feedback labels) is random."""
    seed: int = 0
    """Seed of the demonstrations and the optimizer."""


@dataclass
class AgentConfig:
    """One agent: a Hugging Face causal LM, its tokenizer, system prompt and optimizer settings.

    Exactly one of ``model`` (hub id or local path, for real runs) and ``model_config`` (a
    transformers config to build a randomly initialised model, for CPU runs and tests) is set.
    """

    model: str | None = None
    """Hub id or local directory of a causal LM checkpoint."""
    model_config: dict[str, Any] | None = None
    """Keyword arguments of a transformers config (``model_type`` selects it) for random init."""
    tokenizer: str | None = None
    """Hub id or local directory of the tokenizer; defaults to ``model``. "tiny" is the bundled one."""
    system_prompt: str | None = None
    """System prompt; None takes the built-in default for the agent's role."""
    lora: LoRAConfig | None = None
    """Train LoRA adapters instead of all weights; the reference is then the adapter-disabled base."""
    warm_start: WarmStartConfig | None = None
    """Behaviour cloning before RL: the output format for random-init models; on a pretrained
    feedback agent, a (labelled) format warm start. All weights are trained, before LoRA is added."""
    load_in_4bit: bool = False
    """Load the base in 4-bit NF4 with bitsandbytes (QLoRA); needs ``lora``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype. bf16 on GPUs; on CPUs float32, except on CPUs with AMX, where bf16 matrix
    products of training size run ~6x faster than float32 (benchmarks/README.md)."""
    lr: float = 5e-7
    """AdamW learning rate (paper App. B.2: 5e-7)."""
    weight_decay: float = 0.0
    """AdamW weight decay (UNCONFIRMED; 0)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (UNCONFIRMED)."""
    shared_context_forward: bool = True
    """In this agent's log-prob forwards (old, reference, loss), run a context repeated across rows
    (the samples of one prompt, several feedbacks on one response) once and the responses after it
    through a KV cache: the same values up to rounding, less compute
    (``agents.logprobs.response_logprobs``). False runs every row in full."""
    shared_prefix_forward: bool = True
    """Run the tokens that every context of a batch begins with (the system prompt, the fixed
    opening of each feedback request) once, as one row, in this agent's generation prefill and in
    its log-prob forwards (old, reference, loss, and their backward); every row reads them through a
    KV cache. The same values up to rounding (``kv_sharing``). False runs the prefix in every row."""
    length_buckets: bool = True
    """Split a log-prob forward's rows into up to four groups of similar length, each padded only
    to its own longest row, when the padding saved outweighs the extra model call (answers beside
    revisions that carry the answer and the feedback). The same values up to rounding."""
    merged_lora_sampler: bool = False
    """Sample from a copy of the LoRA policy with the adapter merged into its weights, rewritten
    after every update (``agents/merged_sampler.py``): no adapter bookkeeping per decode step
    (SmolLM2-135M on 2 CPU cores: ~1.5x faster decoding). Costs one more copy of the base
    weights; needs ``lora`` on plain Linear layers (not 4-bit, not DoRA) and one process."""
    sampler_dtype: Literal["same", "bfloat16", "float16"] = "same"
    """The merged sampling copy's dtype (needs ``merged_lora_sampler``). bfloat16 halves the bytes
    of every decode step and is faster on CPUs with bf16 instructions, but is not exact: episodes
    are sampled from a rounded policy while pi_old and the loss use ``dtype``, the gap vLLM-based
    trainers have too (``update/logprob_mismatch`` logs it). "same" keeps ``dtype``."""
    fused_adamw: bool = True
    """torch's fused AdamW kernel (one kernel over all parameters, CPU and CUDA) where the
    parameters allow it; sharded (DTensor) parameters and False use the foreach implementation.
    The same update rule; the fused kernel rounds differently in the last bits."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per agent; 0 disables."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Allow model code from the hub; off unless you trust the repository."""
    seed: int = 0
    """Seed of the random initialisation when ``model_config`` is used."""

    def __post_init__(self) -> None:
        _check(
            (self.model is None) != (self.model_config is None),
            "model / model_config",
            "set exactly one: a hub id or path in 'model', or a config in 'model_config'",
        )
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _check(not self.load_in_4bit or self.lora is not None, "load_in_4bit", "needs lora (4-bit weights are frozen)")
        if self.model is not None and self.model.startswith(("/", "./", "../", "~")):
            # an explicit local path (a bare "org/name" may be a hub id, checked when it loads)
            _check(Path(self.model).expanduser().exists(), "model", f"no such local folder: {self.model}")
        if self.model_config is not None:
            _check("model_type" in self.model_config, "model_config.model_type", "missing (e.g. 'llama')")
            _check_model_config(self.model_config)


def _check_model_config(model_config: dict[str, Any]) -> None:
    """A random-init ``model_config`` that cannot build a model fails here, naming the key: an
    unknown ``model_type`` (checked against transformers' registry, no weights loaded) or a size or
    count that is not a positive integer."""
    from transformers import CONFIG_MAPPING

    model_type = model_config["model_type"]
    if model_type not in CONFIG_MAPPING:
        close = ", ".join(difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING), n=3))
        raise ValueError(f"model_config.model_type: unknown {model_type!r}" + (f"; close: {close}" if close else ""))
    for key, value in model_config.items():
        if key.endswith("_size") or key.startswith("num_") or key in ("max_position_embeddings", "vocab_size"):
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"model_config.{key}",
                   f"must be a positive integer, got {value!r}")


@dataclass
class SamplingConfig:
    """Decoding settings of one agent's turns (paper: UNCONFIRMED; plain sampling at T=1)."""

    max_new_tokens: int = 512
    """Maximum new tokens per turn (paper App. B.2: 512)."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k cut-off; 0 disables."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "top_k", f"must be >= 0 (0 disables), got {self.top_k}")


@dataclass
class RolloutConfig:
    """The collaborative rollout protocol (paper §2.1, §3.1)."""

    max_feedback_rounds: int = 1
    """T_max: feedback rounds per episode (paper: 1 in training and evaluation)."""
    conversation: SamplingConfig = field(default_factory=SamplingConfig)
    """Decoding of the conversation agent."""
    feedback: SamplingConfig = field(default_factory=SamplingConfig)
    """Decoding of the feedback agent."""
    max_prompt_tokens: int = 4096
    """Context tokens kept per turn; longer contexts are cut from the left (paper: 4096)."""
    stop_on_invalid_json_until: int | None = None
    """Invalid feedback JSON ends the episode before this RL step; None means always (paper: "early
    in training", length UNCONFIRMED). Later, an invalid JSON's raw text is forwarded as feedback."""
    feedback_role: Literal["user", "system"] = "user"
    """Chat role that carries feedback to the conversation agent (UNCONFIRMED)."""
    feedback_template: str = "Feedback on your previous response: {feedback}"
    """Wording around the forwarded feedback string; must contain {feedback}."""
    feedback_prefix: str = ""
    """Text placed at the start of every feedback turn, after the chat template's assistant header,
    e.g. ``{"reasoning": "`` (not in the paper: its 8B model writes the JSON unprompted). A small
    model that never opens the JSON object earns format reward 0 on every sample, so its whitened
    advantages are all 0 and RL cannot start; a forced opening gives it valid verdicts to learn
    from. The prefix is context, not action: it is never trained on and is parsed as part of the
    verdict. Empty (the default) forces nothing."""
    sample_b_probability: float = 0.5
    """Probability of training the conversation agent on sample B (p, c0, f0 -> c1) rather than A
    (p -> c0) (paper §2.3, UNCONFIRMED: 0.5)."""
    generation_batch_size: int = 32
    """Sequences per generate call (bounds memory; does not change results)."""

    def __post_init__(self) -> None:
        _check(self.max_feedback_rounds >= 1, "max_feedback_rounds", f"must be >= 1, got {self.max_feedback_rounds}")
        _check("{feedback}" in self.feedback_template, "feedback_template", "must contain '{feedback}'")
        _check(0.0 <= self.sample_b_probability <= 1.0, "sample_b_probability", "must be in [0, 1]")
        _check(self.generation_batch_size > 0, "generation_batch_size", "must be > 0")
        _check(self.max_prompt_tokens > 0, "max_prompt_tokens", "must be > 0")
        until = self.stop_on_invalid_json_until
        _check(until is None or until >= 0, "stop_on_invalid_json_until", f"must be >= 0 or null, got {until}")


@dataclass
class RewardConfig:
    """Feedback-agent reward, eq. 2: alpha*DIR*label + lambda*label + gamma*format (App. B.2)."""

    alpha: float = 0.65
    """Weight of the (gated) improvement term."""
    label_weight_stage1: float = 0.25
    """lambda in stage 1."""
    label_weight_stage2: float = 0.0
    """lambda in stage 2 (the paper drops the additive label term, keeping the gate)."""
    gamma: float = 0.1
    """Weight of the format reward."""
    gate_improvement: bool = True
    """Multiply the improvement term by label correctness (never off in the paper; Fig. 2 variant C)."""
    gate_losses: bool = True
    """With the gate on, gate a negative improvement too (the paper). False charges a revision that
    the feedback made worse whatever the labels, and still pays gains only for correct labels. Not
    in the paper: with the paper's stage-2 reward a false alarm on a good response earns the same
    as a correct pass (spec §4.3), and benchmarks/learning measured the drift that follows."""
    improvement: Literal["dir", "next_outcome"] = "dir"
    """"dir": R_c(c_{t+1}) - R_c(c_t) (eq. 3). "next_outcome": R_c(c_{t+1}) alone (Table 6 ablation).
    With ``gate_improvement`` on and a binary R_c the two give identical rewards (a correct flag
    means R_c(c_t) = 0; a correct pass ends the episode), so the ablation needs the gate off."""

    def __post_init__(self) -> None:
        # Eq. 2 weights: a negative weight rewards the opposite of what its term measures.
        for key in ("alpha", "label_weight_stage1", "label_weight_stage2", "gamma"):
            value = getattr(self, key)
            _check(value >= 0 and value != float("inf"), f"reward.{key}", f"must be a finite number >= 0, got {value}")

    def label_weight(self, stage: int) -> float:
        """lambda of ``stage``: ``label_weight_stage1`` in stage 1, ``label_weight_stage2`` in stage 2
        (paper §2.4: 0.25, then 0). The one place that decides it."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        return self.label_weight_stage1 if stage == 1 else self.label_weight_stage2


AGENT_ROLES = ("conversation", "feedback")

_SHARED_ALGORITHM_KEYS = ("samples_per_prompt", "feedback_samples_per_response", "agent_overrides")
"""Keys that shape the shared rollout, so they cannot differ between the agents."""


@dataclass
class AlgorithmConfig:
    """Per-agent policy-gradient update (paper §2.3, eq. 4: REINFORCE++ with PPO clipping).

    The defaults are the paper's: REINFORCE++, k1 KL folded into the reward with beta 0.01, PPO
    clipping at 0.2, one sample per prompt, one optimizer step per rollout batch. GRPO, Dr.GRPO,
    RLOO, REINFORCE++-baseline and PPO with a critic (GAE) are ablations (``conf/ablations/``).
    ``agent_overrides`` changes any other key for one agent only.
    """

    advantage_estimator: str = "reinforce_plus_plus"
    """Name in ``waltzlit.algorithms.ADVANTAGE_ESTIMATORS``: reinforce_plus_plus,
    reinforce_plus_plus_baseline, grpo, dr_grpo, rloo, or gae (PPO: adds a critic per agent)."""
    policy_loss: str = "ppo_clip"
    """Name in ``waltzlit.algorithms.POLICY_LOSSES``."""
    kl_coef: float = 0.01
    """beta, the KL-to-reference coefficient (App. B.2: 0.01); 0 skips the reference forward."""
    kl_estimator: Literal[KL_ESTIMATORS] = "k1"
    """Per-token KL estimator (REINFORCE++: k1 in the reward; GRPO-style: k3 in the loss)."""
    kl_placement: Literal["reward", "loss"] = "reward"
    """"reward": -beta*KL(pi_old || ref) enters the reward (per token for REINFORCE++ and GAE, as a
    sequence sum for GRPO/Dr.GRPO/RLOO, as verl does). "loss": beta * agg(KL(pi || ref)) is added
    to the policy loss with gradient, aggregated like the policy loss."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss -= coef * agg(token entropy) (verl, OpenRLHF; paper: none)."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1: for negative advantages the loss is capped at -c*A (OpenRLHF)."""
    loss_aggregation: Literal[AGGREGATIONS] = "seq-mean-token-mean"
    """How per-token losses reduce to a scalar (eq. 4: each sequence's token mean, then the batch
    mean). Denominators are counts over the whole mini-batch (and all ranks), so micro-batching
    and the device count do not change the gradient."""
    loss_scale_tokens: int | None = None
    """Constant L of "seq-mean-token-sum-norm" (Dr.GRPO: sum / (sequences * L)); None takes the
    agent's ``rollout.<agent>.max_new_tokens``."""
    samples_per_prompt: int = 1
    """n: each prompt is rolled out n times, and the conversation agent's group is the prompt. The
    data batch stays ``data.batch_size`` prompts; the rollout has n times as many episodes."""
    feedback_samples_per_response: int = 1
    """m: the feedback agent writes m feedbacks on each first response c0, each followed by its own
    revision and DIR; its group is then (prompt, c0), a per-response DIR baseline the paper does not
    use. With m = 1 the feedback agent's group is the prompt (n feedbacks on n different c0)."""
    update_epochs: int = 1
    """Passes over each rollout batch (UNCONFIRMED: 1)."""
    mini_batch_size: int | None = None
    """Samples per optimizer step; None makes the whole rollout batch one mini-batch (the paper)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients accumulate over a mini-batch's micro-batches."""
    recompute_old_logprobs: bool = True
    """Recompute log pi_old with a forward pass on the exact sampled tokens; False reuses the
    generation log-probs (saves a forward; exact only with identical numerics)."""
    old_logprobs_from_update: bool = True
    """With one on-policy optimizer step, no critic and no dropout, read pi_old off the update's own
    forward instead of an extra pass (the weights have not moved yet: the same values). With the
    KL in the reward this needs the whole batch in one micro-batch, whose forward then runs before
    the advantages are estimated (``training.update.old_logprobs_from_update``)."""
    gae_gamma: float = 1.0
    """GAE discount (gae only; verl, OpenRLHF, TRL: 1.0)."""
    gae_lambda: float = 0.95
    """GAE lambda (gae only; TRL, NeMo-RL, torchtune: 0.95)."""
    value_clip: float | None = 0.5
    """Critic value clip: v_old +- this (verl, OpenRLHF: 0.5); None disables."""
    value_loss_coef: float = 1.0
    """Weight of the critic loss 0.5*agg(max(...)) (its own optimizer: only clipping sees it)."""
    critic_lr: float = 1e-5
    """AdamW learning rate of the critics (verl: 1e-5); betas and weight decay are the agent's."""
    agent_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-agent values of any other key, e.g. ``{feedback: {kl_placement: loss, kl_estimator: k3}}``."""

    def __post_init__(self) -> None:
        from waltzlit.algorithms.advantages import GROUP_ESTIMATORS
        from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES

        ADVANTAGE_ESTIMATORS.check(self.advantage_estimator, "algorithm.advantage_estimator")
        POLICY_LOSSES.check(self.policy_loss, "algorithm.policy_loss")
        _check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        _check(self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"allowed values: {', '.join(KL_ESTIMATORS)}")
        _check(self.kl_placement in ("reward", "loss"), "kl_placement", "allowed values: reward, loss")
        _check(self.entropy_coef >= 0, "entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        _check(0 < self.clip_eps < 1, "clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        _check(self.dual_clip is None or self.dual_clip > 1, "dual_clip", f"must be > 1 or null, got {self.dual_clip}")
        _check(self.loss_aggregation in AGGREGATIONS, "loss_aggregation", f"allowed values: {', '.join(AGGREGATIONS)}")
        _check(self.loss_scale_tokens is None or self.loss_scale_tokens >= 1, "loss_scale_tokens", "must be >= 1")
        _check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1")
        _check(self.feedback_samples_per_response >= 1, "feedback_samples_per_response", "must be >= 1")
        _check(
            self.advantage_estimator not in GROUP_ESTIMATORS or self.samples_per_prompt >= 2,
            "samples_per_prompt",
            f"advantage_estimator {self.advantage_estimator!r} compares samples of the same prompt; "
            f"set samples_per_prompt >= 2 (got {self.samples_per_prompt})",
        )
        _check(self.update_epochs >= 1, "update_epochs", "must be >= 1")
        _check(self.mini_batch_size is None or self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1 or null")
        _check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        _check(0 <= self.gae_gamma <= 1, "gae_gamma", f"must be in [0, 1], got {self.gae_gamma}")
        _check(0 <= self.gae_lambda <= 1, "gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")
        _check(self.value_clip is None or self.value_clip > 0, "value_clip", "must be > 0 or null")
        _check(self.value_loss_coef > 0, "value_loss_coef", f"must be > 0, got {self.value_loss_coef}")
        _check(self.critic_lr > 0, "critic_lr", f"must be > 0, got {self.critic_lr}")
        if self.kl_coef > 0 and (self.kl_estimator == "k1") != (self.kl_placement == "reward"):
            # The unbiased-gradient combinations are k1 in the reward, k2 (or k3) in the loss (peers §2.1).
            warnings.warn(
                f"algorithm: kl_estimator {self.kl_estimator!r} with kl_placement {self.kl_placement!r}; the usual "
                "choices are k1 in the reward or k2/k3 in the loss",
                stacklevel=2,
            )
        for role, overrides in self.agent_overrides.items():
            _check(role in AGENT_ROLES, "agent_overrides", f"unknown agent {role!r}; allowed: {', '.join(AGENT_ROLES)}")
            allowed = {f.name for f in fields(self)} - set(_SHARED_ALGORITHM_KEYS)
            bad = sorted(set(overrides) - allowed)
            _check(not bad, f"agent_overrides.{role}", f"cannot override {bad} per agent")
            try:
                self.for_agent(role)
            except ValueError as error:
                raise ValueError(f"agent_overrides.{role}.{error}") from None

    def for_agent(self, role: str) -> AlgorithmConfig:
        """The settings of one agent: this config with ``agent_overrides[role]`` applied."""
        overrides = self.agent_overrides.get(role)
        return replace(self, agent_overrides={}, **overrides) if overrides else self

    @property
    def uses_critic(self) -> bool:
        """PPO with GAE: the agent needs a value model."""
        return self.advantage_estimator == "gae"


@dataclass
class ScheduleConfig:
    """RL steps and the two training stages (paper §2.4)."""

    total_rl_steps: int = 313
    """RL steps of the whole run, both stages (one pass of 10k prompts at 32/step is ~313)."""
    stage1_steps: int = 157
    """RL steps of stage 1 (feedback agent only, lambda > 0); stage 2 follows. 0 starts in stage 2;
    >= total_rl_steps runs stage 1 only, to be continued by another run with --ckpt_path."""
    freeze_conversation: bool = False
    """Keep the conversation agent frozen in stage 2 as well (it still rolls out): the paper's
    co-evolution ablation (Table 5, "frozen conversation agent, both stages")."""
    log_transcripts_every: int = 10
    """Write rollout transcripts to TensorBoard every this many RL steps; 0 disables."""
    num_transcripts: int = 2
    """Episodes per transcript dump."""

    def __post_init__(self) -> None:
        _check(self.total_rl_steps >= 1, "total_rl_steps", "must be >= 1")
        _check(self.stage1_steps >= 0, "stage1_steps", "must be >= 0")
        _check(self.log_transcripts_every >= 0, "log_transcripts_every", "must be >= 0 (0 disables)")
        _check(self.num_transcripts >= 0, "num_transcripts", "must be >= 0")

    def stage_at(self, rl_step: int) -> int:
        """The stage (1 or 2) that RL step ``rl_step`` (0-based) belongs to."""
        return 1 if rl_step < self.stage1_steps else 2

    def stage_start(self, stage: int) -> int:
        """The first RL step of ``stage``."""
        return 0 if stage == 1 else self.stage1_steps
