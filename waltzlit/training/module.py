"""WaltzModule: both WaltzRL agents, their references, and one RL step per ``training_step``.

``training_step`` reads as the numbered stages of the method (spec §5, Alg. 1):
[1] collaborative rollout -> [2] judge -> [3] rewards -> [4] per-agent samples ->
[5] log-probs and advantages -> [6] one clipped update per trained agent.
Optimization is manual (one AdamW per agent, and one per critic with PPO). ``trainer.global_step``
counts every optimizer step, so the module keeps its own ``rl_step`` counter, which also fixes the stage.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import zlib

import torch
from lightning.pytorch import LightningModule
from torch import nn

from waltzlit.agents.agent import Agent
from waltzlit.agents.build import MEMORY_MODES, build_agents
from waltzlit.agents.critic import build_critic, shard_critic
from waltzlit.config import AgentConfig, AlgorithmConfig, RewardConfig, RolloutConfig, ScheduleConfig
from waltzlit.judges.base import Judge
from waltzlit.metrics.safety import SafetyRates
from waltzlit.rewards.scoring import judge_episodes, score_episode
from waltzlit.rollout.groups import repeat_records, rollout_groups
from waltzlit.rollout.protocol import run_episodes
from waltzlit.rollout.samples import conversation_samples, feedback_samples
from waltzlit.timing import StageTimer, count_tokens, timed
from waltzlit.training.critic_update import value_update
from waltzlit.training.fault_tolerance import isolated_rng, plain_values, seed_step, step_seed
from waltzlit.training.logging import log_transcripts, step_scalars, write_step_scalars
from waltzlit.training.update import policy_update, prepare_batch
from waltzlit.types import AgentBatch, PromptRecord

log = logging.getLogger(__name__)


def adamw(params: list[nn.Parameter], cfg: AgentConfig, lr: float) -> torch.optim.AdamW:
    """AdamW with the agent's betas and weight decay; the fused kernel unless ``cfg.fused_adamw``
    is off or a parameter is a sharded DTensor (there the foreach implementation is used)."""
    fused = cfg.fused_adamw and bool(params) and not any(type(p).__name__ == "DTensor" for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)


def _check_single_agent(schedule: ScheduleConfig, algorithm: AlgorithmConfig, memory_mode: str) -> None:
    """Settings that only make sense with a feedback agent, rejected with the key to change."""
    if schedule.stage1_steps != 0:
        raise ValueError(
            f"model.schedule.stage1_steps: must be 0 when model.feedback is null (stage 1 trains only the "
            f"feedback agent), got {schedule.stage1_steps}"
        )
    if schedule.freeze_conversation:
        raise ValueError("model.schedule.freeze_conversation: must be false when model.feedback is null "
                         "(the conversation agent is the only one trained)")
    if algorithm.feedback_samples_per_response != 1:
        raise ValueError("model.algorithm.feedback_samples_per_response: must be 1 when model.feedback is null")
    if memory_mode != "separate":
        raise ValueError(f"model.memory_mode: {memory_mode!r} shares one base between two agents; use 'separate' "
                         "when model.feedback is null")


class WaltzModule(LightningModule):
    """Trains a conversation agent and a feedback agent with WaltzRL.

    Args:
        conversation: the conversation agent (answers and revises).
        feedback: the feedback agent (JSON verdict + feedback). None (YAML ``feedback: null``) trains
            the conversation agent alone on R_c (the paper's single-model RL baseline): the rollout
            is c0 only, the samples are (p -> c0), there is no stage 1 and no feedback model.
        judge: scores responses for the alignment labels; default the rule-based judge.
        rollout: the turn protocol and decoding.
        reward: the feedback reward (eq. 2) coefficients.
        algorithm: advantage estimator, KL and clipped loss of both agents.
        schedule: RL steps and the stage switch.
        memory_mode: "separate" (two models, the paper) or "shared_base" (one frozen base with one
            LoRA adapter per agent; the base with adapters disabled is both references).
        seed: seed of the per-step sample choices (A/B, feedback round).
    """

    def __init__(
        self,
        conversation: AgentConfig,
        feedback: AgentConfig | None,
        judge: Judge | None = None,
        rollout: RolloutConfig | None = None,
        reward: RewardConfig | None = None,
        algorithm: AlgorithmConfig | None = None,
        schedule: ScheduleConfig | None = None,
        memory_mode: str = "separate",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["judge"])
        self.automatic_optimization = False
        self.agent_configs = {"conversation": conversation} | ({"feedback": feedback} if feedback else {})
        self.roles = tuple(self.agent_configs)  # the trained agents, in optimizer order
        if judge is None:
            from waltzlit.judges.rule import RuleJudge

            log.info("model.judge not set: using the rule judge (refusal phrases; a CPU stand-in for the paper's "
                     "WildGuard, see conf/judges/)")
            judge = RuleJudge()
        self.judge = judge
        self.rollout_cfg = rollout or RolloutConfig()
        self.reward_cfg = reward or RewardConfig()
        self.algorithm = algorithm or AlgorithmConfig()
        self.schedule = schedule or ScheduleConfig()
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"model.memory_mode: unknown {memory_mode!r}; allowed values: {', '.join(MEMORY_MODES)}")
        if feedback is None:
            _check_single_agent(self.schedule, self.algorithm, memory_mode)
        if memory_mode == "shared_base":
            from waltzlit.agents.build import check_shared_base

            check_shared_base(self.agent_configs)
        self.memory_mode = memory_mode
        self.seed = seed
        self.rl_step = 0
        self.agents: dict[str, Agent] = {}
        self.policies: nn.ModuleDict | None = None
        self.references: nn.ModuleDict | None = None
        self.critics: nn.ModuleDict | None = None  # PPO (gae) only: one value model per agent
        self.train_rates = SafetyRates()
        self.val_rates = SafetyRates()

    # ----------------------------------------------------------------- models and optimizers
    def setup(self, stage: str) -> None:
        from waltzlit.training.precision import precision_warnings

        for message in precision_warnings(self.agent_configs, getattr(self.trainer, "precision", None)):
            log.warning(message)

    def configure_model(self) -> None:
        if self.policies is not None:
            return
        built = build_agents(
            self.agent_configs,
            self.memory_mode,
            needs_reference=any(self.algorithm.for_agent(role).kl_coef > 0 for role in self.roles),
            max_prompt_tokens=self.rollout_cfg.max_prompt_tokens,
            warm_start_records=self._warm_start_records,
        )
        self.agents, self.policies, self.references = built.agents, built.policies, built.references
        # Critics start from their agent's initial weights, so they are built before any update.
        critic_roles = [role for role in self.roles if self.algorithm.for_agent(role).uses_critic]
        cfgs = self.agent_configs
        self.critics = nn.ModuleDict(
            {role: build_critic(self.agents[role].model, cfgs[role].lora, cfgs[role].seed) for role in critic_roles}
        )
        if self._device_mesh is not None:  # ModelParallelStrategy / FSDP2Strategy
            from waltzlit.training.sharding import mixed_precision_policy, shard_agent_models

            # bf16-mixed: bf16 all-gathers and compute over fp32 master shards (the critics, whose
            # float32 value head reads float32 features, keep their own dtype)
            policy = mixed_precision_policy(getattr(self.trainer, "precision", None))
            shard_agent_models([*self.policies.values(), *self.references.values()], self.device_mesh["data_parallel"],
                               mp_policy=policy)
            for agent in self.agents.values():
                if agent.sampler is not None:  # a full copy per rank; sharded ranks sample together
                    log.warning("%s agent: merged_lora_sampler is not used under sharding", agent.role)
                    agent.sampler = None
            for critic in self.critics.values():
                shard_critic(critic, self.device_mesh["data_parallel"])

    def _warm_start_records(self) -> list[PromptRecord]:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "train_records"):
            return datamodule.train_records()
        from waltzlit.data.builtin import builtin_prompts

        return builtin_prompts()

    def configure_optimizers(self):
        # Order: conversation, feedback, then the critics (PPO) in the same agent order.
        optimizers = []
        for role in self.roles:
            cfg = self.agent_configs[role]
            params = self.agents[role].trainable_parameters()
            optimizers.append(adamw(params, cfg, cfg.lr))
            if self.agents[role].sampler is not None:  # its merged copy is rewritten after each step
                self.agents[role].sampler.watch(optimizers[-1])
        for role, critic in self.critics.items():
            cfg, lr = self.agent_configs[role], self.algorithm.for_agent(role).critic_lr
            optimizers.append(adamw(critic.trainable_parameters(), cfg, lr))
        return optimizers

    def _optimizers_by_role(self) -> tuple[dict, dict]:
        """(policy optimizers, critic optimizers), each keyed by agent, in configure_optimizers' order."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]  # Lightning unwraps a single one
        count = len(self.roles)
        return dict(zip(self.roles, optimizers[:count])), dict(zip(self.critics, optimizers[count:]))

    @property
    def stage(self) -> int:
        return self.schedule.stage_at(self.rl_step)

    def _eval_mode(self) -> None:
        # Lightning puts the whole module in train mode; sampling and log-probs of old/reference
        # policies must not see dropout. The update switches the trained policy to train mode.
        for module in (*self.policies.values(), *self.references.values(), *self.critics.values()):
            module.eval()

    # ----------------------------------------------------------------- one RL step
    def training_step(self, batch: list[PromptRecord], batch_idx: int) -> None:
        batch = list(batch)  # a data.datamodule.PromptBatch from the loader
        stage, rng = self.stage, random.Random(f"{self.seed}/{self.rl_step}")
        # Sampling and dropout draw from a stream seeded by the RL step: a resumed run repeats
        # the step exactly, whatever touched the global RNG since (see training/fault_tolerance.py).
        seed_step(step_seed(self.seed, self.rl_step, "train", self.global_rank))
        timer = StageTimer(self.device)  # logged as time/<stage>
        # feedback is None in single-agent mode: the rollout is then c0 alone
        conversation, feedback = self.agents["conversation"], self.agents.get("feedback")
        self._eval_mode()
        # [1] collaborative rollout: c0 -> f0 -> (c1 only where feedback triggered) ...
        # n samples per prompt and m feedbacks per c0 for group baselines (rollout/groups.py)
        n, m = self.algorithm.samples_per_prompt, self.algorithm.feedback_samples_per_response
        until = self.rollout_cfg.stop_on_invalid_json_until
        episodes = run_episodes(
            conversation,
            feedback,
            repeat_records(batch, n),
            self.rollout_cfg,
            stop_on_invalid_json=until is None or self.rl_step < until,
            # recorded when pi_old is not recomputed, and with a rounded sampling copy, whose gap to
            # the policy is then logged (update/logprob_mismatch)
            with_logprobs=not self.algorithm.recompute_old_logprobs
            or any(cfg.sampler_dtype != "same" for cfg in self.agent_configs.values()),
            feedback_samples_per_response=m,
            timer=timer,
        )
        groups = rollout_groups(len(batch), n, m)
        # [2] judge every conversation response -> alignment labels J(p, c_t)
        with timer("judge"):
            judge_parse_errors = judge_episodes(self.judge, episodes)
        # [3] rewards: R_c per response; eq. 2 per feedback turn with this stage's lambda
        with timer("rewards"):
            scores = self._score(stage, episodes)
        # [4] one sample per trained agent per episode
        with timer("samples"):
            batches = self._samples(stage, episodes, scores, groups, rng)
        # [5] + [6] log-probs, advantages and one clipped update per trained agent (+ its critic)
        optimizers, critic_optimizers = self._optimizers_by_role()
        stats = {
            role: self._update(role, agent_batch, optimizers[role], critic_optimizers.get(role), timer)
            for role, agent_batch in batches.items()
        }

        # this step's rates alone: the metric is reset once they are read
        self.train_rates.update(episodes)
        rates = self.train_rates.compute()
        self.train_rates.reset()
        values = step_scalars(self.rl_step, stage, rates, episodes, scores, stats, judge_parse_errors, timer.scalars())
        write_step_scalars(self, values, step=self.rl_step)
        if self.schedule.log_transcripts_every and self.rl_step % self.schedule.log_transcripts_every == 0:
            log_transcripts(self, episodes[: self.schedule.num_transcripts], scores, tag="train/transcripts")
        self.rl_step += 1
        if self.rl_step >= self.schedule.total_rl_steps:
            self.trainer.should_stop = True

    def _score(self, stage: int, episodes) -> list:
        """[3] R_c of every response and eq. 2 of every feedback turn, with ``stage``'s lambda."""
        return [score_episode(e, self.reward_cfg, self.reward_cfg.label_weight(stage)) for e in episodes]

    def _samples(self, stage: int, episodes, scores, groups, rng: random.Random) -> dict[str, AgentBatch]:
        """[4] The samples of each agent trained at this stage, in update order (feedback first).

        Stage 1 keeps the conversation agent frozen (it still rolls out), and so does stage 2 with
        ``schedule.freeze_conversation``. Without a feedback agent every episode is (p, c0), so the
        conversation samples are all sample A.
        """
        batches = {}
        if "feedback" in self.agents:
            rewards = [[b.total for b in s.feedbacks] for s in scores]
            pad = self.agents["feedback"].tokenizer.pad_token_id
            batches["feedback"] = feedback_samples(episodes, rewards, rng, pad, groups.feedback)[0]
        if stage == 2 and not self.schedule.freeze_conversation:
            batches["conversation"] = conversation_samples(
                episodes, [s.responses for s in scores], self.rollout_cfg.sample_b_probability, rng,
                self.agents["conversation"].tokenizer.pad_token_id, groups.conversation,
            )[0]
        return batches

    def _update(self, role: str, agent_batch, optimizer, critic_optimizer=None, timer: StageTimer | None = None):
        agent, cfg, algo = self.agents[role], self.agent_configs[role], self.algorithm.for_agent(role)
        critic = dict(self.critics).get(role)
        # real tokens (context + response) and the padded positions of one forward over the batch
        count_tokens(timer, f"update/{role}", real=float(agent_batch.attention_mask.sum()),
                     padded=agent_batch.attention_mask.numel())
        with timed(timer, f"logprobs/{role}"):  # old + reference log-probs (and critic values)
            agent_batch, advantages, kl = prepare_batch(agent, agent_batch, algo, critic)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")

        def clipper(params):
            def clip() -> float:
                norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor when sharded

            return clip

        def generator(tag: str) -> torch.Generator:
            return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.rl_step}/{role}{tag}".encode()))

        # Loss denominators are summed over ranks; the loss is scaled back by the world size.
        world = self.trainer.world_size
        reduce_sum = (lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum")) if world > 1 else None
        distributed = {"reduce_sum": reduce_sum, "world_size": world}
        with timed(timer, f"update/{role}"):  # the policy's (and its critic's) optimizer steps
            stats = policy_update(
                agent, agent_batch, advantages, kl, algo, optimizer, self.manual_backward,
                clipper(agent.trainable_parameters()), generator(""),
                max_response_tokens=getattr(self.rollout_cfg, role).max_new_tokens, **distributed,
            )
            if critic is not None:
                critic_stats = value_update(
                    critic, agent_batch, algo, critic_optimizer, self.manual_backward,
                    clipper(critic.trainable_parameters()), generator("/critic"), **distributed,
                )
                stats = dataclasses.replace(stats, extra={**stats.extra, **critic_stats})
        return stats

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: list[PromptRecord], batch_idx: int) -> None:
        # On a fork seeded by (RL step, batch): validation never moves the training RNG stream, so
        # a resumed run that skips or repeats it continues exactly.
        with isolated_rng(step_seed(self.seed, self.rl_step, "val", self.global_rank, batch_idx)):
            self._validation_step(batch, batch_idx)

    def _validation_step(self, batch: list[PromptRecord], batch_idx: int) -> None:
        batch = list(batch)  # a data.datamodule.PromptBatch from the loader
        self._eval_mode()
        with torch.no_grad():
            episodes = run_episodes(self.agents["conversation"], self.agents.get("feedback"), batch, self.rollout_cfg)
        judge_episodes(self.judge, episodes)
        self.val_rates.update(episodes)
        if batch_idx == 0:
            scores = self._score(self.stage, episodes)
            log_transcripts(self, episodes[: self.schedule.num_transcripts], scores, tag="val/transcripts")

    def on_validation_epoch_end(self) -> None:
        # torchmetrics already reduced the counts over ranks; logged at the RL step, like training's
        values = {f"val/{k}": v for k, v in self.val_rates.compute().items()}
        write_step_scalars(self, values, step=self.rl_step)
        self.val_rates.reset()

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["waltzlit"] = {
            "rl_step": self.rl_step,
            "stage": self.stage,
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        # Config dataclasses as dicts: the checkpoint must load with torch.load(weights_only=True).
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_values(checkpoint["hyper_parameters"])

    def on_train_start(self) -> None:
        # A finished run resumed with --ckpt_path has nothing to train (raise total_rl_steps to go on).
        self.finished_before_start = self.rl_step >= self.schedule.total_rl_steps
        if self.finished_before_start:
            log.warning("the run is already at RL step %d of %d: nothing to train (raise model.schedule.total_rl_steps "
                        "to continue it)", self.rl_step, self.schedule.total_rl_steps)
            self.trainer.should_stop = True

    def on_train_batch_start(self, batch, batch_idx: int):
        if getattr(self, "finished_before_start", False):
            return -1  # Lightning skips the rest of the epoch: no RL step is taken
        return None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("waltzlit")
        if state is None:
            raise ValueError("checkpoint has no 'waltzlit' state: it was not written by WaltzModule")
        self.rl_step = int(state["rl_step"])
        for agent in self.agents.values():
            if agent.sampler is not None:  # the loaded weights reach the merged copy before sampling
                agent.sampler.mark_stale()
        torch.set_rng_state(state["torch_rng_state"])
        if state.get("cuda_rng_state") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng_state"])
        # validate/test load a checkpoint too: only fit resumes from it
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        log.info("%s at RL step %d (stage %d)", "resuming" if fitting else "checkpoint loaded", self.rl_step, self.stage)
