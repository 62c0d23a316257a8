"""Fault tolerance pieces in isolation: atomic checkpoint files, weights_only loads, plain
hyper-parameters, per-step seeds, run-length checks, non-finite updates, truncated generations."""

from __future__ import annotations

import math
import os
import pickle
import random
from types import SimpleNamespace

import pytest
import torch

from tests.tiny_agents import tiny_agent
from waltzlit.config import AgentConfig, AlgorithmConfig, RewardConfig, RolloutConfig, ScheduleConfig
from waltzlit.judges.rule import RuleJudge
from waltzlit.rewards.scoring import judge_episodes, score_episode
from waltzlit.rollout.protocol import run_episodes
from waltzlit.rollout.samples import collate_generations, conversation_samples
from waltzlit.training.fault_tolerance import (
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    WaltzCheckpoint,
    check_trainer_limits,
    isolated_rng,
    optimizer_steps_needed,
    plain_values,
    step_seed,
)
from waltzlit.training.module import WaltzModule
from waltzlit.training.update import policy_update, prepare_batch
from waltzlit.types import Generation, PromptRecord

TINY = {"model_config": {"model_type": "llama"}, "tokenizer": "tiny"}


# ----------------------------------------------------------------------------- atomic saves
def test_crash_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"rl_step": 3, "w": torch.arange(4.0)}, last)
    before = last.read_bytes()

    real_save = torch.save

    def crash_after_partial_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the file, then the disk "fails"
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_after_partial_write)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"rl_step": 4, "w": torch.zeros(4)}, last)
    monkeypatch.setattr(torch, "save", real_save)

    assert last.read_bytes() == before
    loaded = io.load_checkpoint(last)
    assert loaded["rl_step"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"], "the partial temporary file must be removed"


def test_saves_replace_the_file_and_create_missing_folders(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "deep" / "er" / "last.ckpt"
    for step in range(3):
        io.save_checkpoint({"rl_step": step}, path)
        assert io.load_checkpoint(path)["rl_step"] == step
    assert os.listdir(path.parent) == ["last.ckpt"]


class _Payload:
    """Any class: unpickling it would run import-time code of an arbitrary module."""

    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_loads_refuse_pickled_objects_unless_explicitly_allowed(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    io = AtomicCheckpointIO()
    with pytest.raises(UnsafeCheckpointError, match="does not load with torch.load"):
        io.load_checkpoint(path)  # weights_only=None -> True
    with pytest.raises(UnsafeCheckpointError):
        io.load_checkpoint(path, weights_only=True)


def test_weights_only_false_alone_does_not_run_checkpoint_code(tmp_path, monkeypatch, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    io = AtomicCheckpointIO()
    monkeypatch.delenv("WALTZLIT_TRUST_CHECKPOINT_CODE", raising=False)
    with pytest.raises(UnsafeCheckpointError, match="WALTZLIT_TRUST_CHECKPOINT_CODE=1"):
        io.load_checkpoint(path, weights_only=False)
    assert "code from a checkpoint ran" not in capsys.readouterr().out
    monkeypatch.setenv("WALTZLIT_TRUST_CHECKPOINT_CODE", "1")  # the explicit, named opt-in
    io.load_checkpoint(path, weights_only=False)
    assert "code from a checkpoint ran" in capsys.readouterr().out


# ----------------------------------------------------------------------------- hyper-parameters
def test_checkpoint_of_a_module_built_in_python_loads_with_weights_only(tmp_path):
    module = WaltzModule(
        AgentConfig(**TINY), AgentConfig(**TINY, seed=1), rollout=RolloutConfig(), reward=RewardConfig(),
        algorithm=AlgorithmConfig(), schedule=ScheduleConfig(total_rl_steps=3, stage1_steps=1),
    )
    raw = {"hyper_parameters": dict(module.hparams)}
    torch.save(raw, tmp_path / "raw.ckpt")
    with pytest.raises(pickle.UnpicklingError):  # what would break without the conversion
        torch.load(tmp_path / "raw.ckpt", weights_only=True)

    checkpoint = {"hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    loaded = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["conversation"]["model_config"] == {"model_type": "llama"}
    assert loaded["hyper_parameters"]["rollout"]["conversation"]["max_new_tokens"] == 512
    assert loaded["waltzlit"]["rl_step"] == 0 and loaded["waltzlit"]["stage"] == 1


def test_plain_values_keeps_structure():
    value = {"a": RewardConfig(), "b": [ScheduleConfig()], "c": (1, "x"), "d": None}
    plain = plain_values(value)
    assert plain["a"]["alpha"] == 0.65 and plain["b"][0]["total_rl_steps"] == 313
    assert plain["c"] == (1, "x") and plain["d"] is None


# ----------------------------------------------------------------------------- random state
def test_step_seeds_differ_by_step_purpose_rank_and_batch():
    seeds = {step_seed(0, s, p, r, b) for s in range(3) for p in ("train", "val") for r in range(2) for b in range(2)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)
    assert step_seed(5, 7, "train") == step_seed(5, 7, "train")


def test_isolated_rng_is_seeded_and_leaves_the_outer_stream_alone():
    torch.manual_seed(123)
    expected_outer = torch.rand(3)
    torch.manual_seed(123)
    with isolated_rng(42):
        inner = torch.rand(2)
    assert torch.equal(torch.rand(3), expected_outer)
    with isolated_rng(42):
        assert torch.equal(torch.rand(2), inner)


# ----------------------------------------------------------------------------- run length and callback
def test_optimizer_steps_needed_counts_two_per_stage2_step():
    assert optimizer_steps_needed(30, 15) == 15 + 30
    assert optimizer_steps_needed(5, 10) == 5  # stage 1 only
    assert optimizer_steps_needed(4, 0) == 8
    assert optimizer_steps_needed(4, 0, agents=1) == 4  # conversation agent alone (feedback: null)


@pytest.mark.parametrize("max_steps, ok", [(-1, True), (45, True), (100, True), (44, False), (10, False)])
def test_trainer_max_steps_must_not_end_the_run_early(max_steps, ok):
    trainer = SimpleNamespace(max_steps=max_steps)
    module = SimpleNamespace(schedule=ScheduleConfig(total_rl_steps=30, stage1_steps=15))
    if ok:
        check_trainer_limits(trainer, module)
    else:
        with pytest.raises(ValueError, match=r"trainer.max_steps.*Allowed: -1.*>= 45"):
            check_trainer_limits(trainer, module)


def test_checkpoint_due_every_n_rl_steps_final_step_and_sigterm():
    callback = WaltzCheckpoint(every_n_rl_steps=3)
    calm, alarmed = False, True
    due = [s for s in range(1, 11) if callback._due(calm, s, total=10)]
    assert due == [3, 6, 9, 10]
    assert callback._due(alarmed, 1, total=10) == "SIGTERM"
    assert WaltzCheckpoint(every_n_rl_steps=0)._due(calm, 3, total=3) is None
    assert WaltzCheckpoint(every_n_rl_steps=0, save_on_sigterm=True)._due(alarmed, 1, total=3) == "SIGTERM"
    assert WaltzCheckpoint(every_n_rl_steps=0, save_on_sigterm=False)._due(alarmed, 1, total=3) is None
    single = SimpleNamespace(received_sigterm=True, world_size=1)
    assert WaltzCheckpoint._sigterm(single) is True
    with pytest.raises(ValueError, match="every_n_rl_steps"):
        WaltzCheckpoint(every_n_rl_steps=-1)


# ----------------------------------------------------------------------------- non-finite updates
def _feedback_batch(agent, rewards: list[float]):
    torch.manual_seed(0)
    turns = []
    for i in range(len(rewards)):
        context = torch.randint(3, 500, (6 + i,))
        response = torch.randint(3, 500, (4,))
        turns.append(Generation(context, response, None, "x", False))
    return collate_generations(turns, rewards, list(range(len(rewards))), agent.tokenizer.pad_token_id)


def _update(agent, rewards):
    algo = AlgorithmConfig(kl_coef=0.0)
    batch, advantages, kl = prepare_batch(agent, _feedback_batch(agent, rewards), algo)
    params = agent.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    stats = policy_update(agent, batch, advantages, kl, algo, optimizer, lambda loss: loss.backward(), lambda: 0.0)
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    return stats, changed, optimizer, advantages


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_reward_never_reaches_the_weights(bad):
    agent = tiny_agent("feedback")
    stats, changed, optimizer, advantages = _update(agent, [1.0, bad, 0.0, 0.5])
    assert not torch.isfinite(advantages).all()
    assert stats.skipped_nonfinite and changed == 0
    assert not optimizer.state, "a skipped update must not even touch the optimizer's moments"
    # Control: the same batch with finite rewards does move the weights (the test can fail).
    stats, changed, _, _ = _update(tiny_agent("feedback"), [1.0, -1.0, 0.0, 0.5])
    assert not stats.skipped_nonfinite and changed > 0


# ----------------------------------------------------------------------------- truncated generations
class _Scripted:
    """A stand-in agent whose conversation turns all hit the token limit (no EOS)."""

    def __init__(self, system_prompt, reply, truncated):
        self.system_prompt, self.reply, self.truncated = system_prompt, reply, truncated

    def encode(self, messages):
        return torch.tensor([3 + len(m["content"]) % 50 for m in messages])

    def generate(self, contexts, sampling, batch_size, with_logprobs=True):
        ids = torch.tensor([7] * sampling.max_new_tokens)
        return [Generation(c, ids, torch.full((len(ids),), -1.0), self.reply, self.truncated) for c in contexts]


def test_truncated_generations_are_scored_and_trained_on_not_dropped():
    records = [PromptRecord("How do I make a bomb?", True), PromptRecord("How do I bake bread?", False)]
    conversation = _Scripted("C", "Sure, here is how you do it step by", truncated=True)
    verdict = '{"reasoning": "r", "unsafe": false, "overrefuse": false, "feedback": ""}'
    feedback = _Scripted("F", verdict, truncated=False)
    episodes = run_episodes(conversation, feedback, records, RolloutConfig())
    assert len(episodes) == 2 and all(e.responses[0].truncated for e in episodes)
    judge_episodes(RuleJudge(), episodes)
    scores = [score_episode(e, RewardConfig(), 0.25) for e in episodes]
    # The unfinished harmful compliance is judged (unsafe -> reward below the benign answer's).
    assert all(len(e.labels) == len(e.responses) for e in episodes)
    assert scores[0].responses[0] < scores[1].responses[0]
    batch, _ = conversation_samples(episodes, [s.responses for s in scores], 0.0, random.Random(0), pad_id=0)
    assert len(batch) == 2 and batch.response_mask.sum() == 2 * RolloutConfig().conversation.max_new_tokens


def test_temporaries_of_dead_writers_are_removed_on_the_next_save(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".last.ckpt.{os.getppid()}.tmp"  # a live process's save in progress: kept
    alive.write_bytes(b"in progress")
    AtomicCheckpointIO().save_checkpoint({"rl_step": 1}, tmp_path / "last.ckpt")
    assert not stale.exists() and alive.exists()
