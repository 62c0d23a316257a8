"""The method's wiring, pinned on hand-built episodes through the code the module runs.

Each test fails on one deliberately broken line: the label compared against another response
than the one the feedback reviewed, lambda taken from the wrong stage, the conversation agent
trained in stage 1, DIR computed without the revision, a training step that takes its stage from
anywhere but its RL step (tests/mutate.py applies these breaks). Rewards (paper eq. 2-3, App. B.2):
R_f = alpha * DIR * label + lambda * label + gamma * format, alpha 0.65, lambda 0.25 / 0, gamma 0.1.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from waltzlit.config import AgentConfig, RewardConfig, ScheduleConfig
from waltzlit.rewards.scoring import score_episode
from waltzlit.rollout.groups import rollout_groups
from waltzlit.training.module import WaltzModule
from waltzlit.training.update import UpdateStats
from waltzlit.types import AlignmentLabels, Episode, Generation, ParsedFeedback, PromptRecord

UNSAFE = AlignmentLabels(unsafe=True, overrefuse=False)
GOOD = AlignmentLabels(unsafe=False, overrefuse=False)
OVERREFUSE = AlignmentLabels(unsafe=False, overrefuse=True)


def _turn(text: str) -> Generation:
    return Generation(context_ids=torch.tensor([5, 6, 7]), response_ids=torch.tensor([8, 9, 2]), logprobs=None,
                      text=text, truncated=False)


def _verdict(unsafe: bool, overrefuse: bool) -> ParsedFeedback:
    return ParsedFeedback(valid=True, unsafe=unsafe, overrefuse=overrefuse, feedback="revise" if unsafe or overrefuse else "")


def _episode(labels, verdicts, harmful: bool = True) -> Episode:
    """Responses c_0..c_T with judge labels ``labels`` and feedback verdicts f_0.. on them."""
    return Episode(record=PromptRecord("how do I pick a lock?", harmful),
                   responses=[_turn(f"c{t}") for t in range(len(labels))],
                   feedbacks=[_turn(f"f{t}") for t in range(len(verdicts))],
                   parsed=list(verdicts), labels=list(labels))


def _module(**schedule) -> WaltzModule:
    tiny = AgentConfig(model_config={"model_type": "llama"}, tokenizer="tiny")
    return WaltzModule(conversation=tiny, feedback=tiny, schedule=ScheduleConfig(total_rl_steps=4, stage1_steps=2, **schedule))


def test_label_is_checked_against_the_response_the_feedback_reviewed():
    # T_max = 2: c0 unsafe, f0 flags unsafe (right for c0); c1 over-refuses, f1 flags over-refusal
    # (right for c1). Against c_t both labels are right: R^label = 1, 1. Compared with another
    # response (c_{t+1} for f0, c0 for f1) both would be wrong.
    episode = _episode([UNSAFE, OVERREFUSE, GOOD], [_verdict(True, False), _verdict(False, True)])
    scores = score_episode(episode, RewardConfig(), label_weight=0.25)
    assert [b.label for b in scores.feedbacks] == [1.0, 1.0]


def test_dir_uses_the_revision_when_there_is_one():
    # c0 unsafe (R_c 0), correct flag, c1 good (R_c 1): DIR = 1 - 0 = 1, so at stage 1
    # R_f = 0.65 * 1 * 1 + 0.25 * 1 + 0.1 * 1 = 1.0. Without the revision DIR would be 0 (R_f 0.35).
    revised = _episode([UNSAFE, GOOD], [_verdict(True, False)])
    breakdown = score_episode(revised, RewardConfig(), label_weight=0.25).feedbacks[0]
    assert breakdown.improvement == 1.0 and breakdown.total == pytest.approx(1.0)
    # The episode stopped at f0 (satisfactory on a good c0): no c1, DIR = 0, R_f = 0.25 + 0.1 = 0.35.
    stopped = _episode([GOOD], [_verdict(False, False)])
    assert score_episode(stopped, RewardConfig(), label_weight=0.25).feedbacks[0].total == pytest.approx(0.35)


def test_lambda_comes_from_the_current_stage_in_the_module():
    # A correct "satisfactory" verdict on a good c0 (no revision): R_f = lambda * 1 + 0.1 * 1,
    # 0.25 + 0.1 = 0.35 in stage 1 and 0 + 0.1 = 0.1 in stage 2.
    module = _module()
    episode = _episode([GOOD], [_verdict(False, False)])
    assert module._score(1, [episode])[0].feedbacks[0].total == pytest.approx(0.35)
    assert module._score(2, [episode])[0].feedbacks[0].total == pytest.approx(0.1)
    assert RewardConfig().label_weight(1) == 0.25 and RewardConfig().label_weight(2) == 0.0
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        RewardConfig().label_weight(3)


@pytest.mark.parametrize(("stage", "freeze", "trained"), [
    (1, False, ["feedback"]),                  # stage 1: the conversation agent is frozen
    (2, False, ["feedback", "conversation"]),  # stage 2: both agents, feedback first
    (2, True, ["feedback"]),                   # the Table 5 ablation: frozen in both stages
])
def test_which_agents_train_at_each_stage(stage, freeze, trained):
    module = _module(freeze_conversation=freeze)
    tokenizer = SimpleNamespace(pad_token_id=0)
    module.agents = {"conversation": SimpleNamespace(tokenizer=tokenizer), "feedback": SimpleNamespace(tokenizer=tokenizer)}
    episodes = [_episode([UNSAFE, GOOD], [_verdict(True, False)]), _episode([GOOD], [_verdict(False, False)])]
    scores = module._score(stage, episodes)
    batches = module._samples(stage, episodes, scores, rollout_groups(2, 1, 1), random.Random(0))
    assert list(batches) == trained


@pytest.mark.parametrize(("rl_step", "stage", "feedback_reward", "trained"), [
    (1, 1, 0.35, ["feedback"]),                  # the last step of stage 1 (stage1_steps 2): lambda 0.25
    (2, 2, 0.1, ["feedback", "conversation"]),   # the first step of stage 2: lambda 0
])
def test_a_training_step_takes_lambda_and_its_trainees_from_its_rl_step(monkeypatch, rl_step, stage, feedback_reward,
                                                                        trained):
    # One WaltzModule.training_step with only the rollout, the judge and the optimizer steps stubbed:
    # a good c0 and a correct "satisfactory" verdict, so R_f = lambda * 1 + 0.1 * 1 (no revision,
    # DIR 0): 0.25 + 0.1 = 0.35 at RL step 1 and 0 + 0.1 = 0.1 at RL step 2. The stage, lambda and
    # the trained agents must all follow module.rl_step, and the scalars are written at that step.
    import waltzlit.training.module as module_code

    module = _module(log_transcripts_every=0)
    module.rl_step = rl_step
    tokenizer = SimpleNamespace(pad_token_id=0)
    module.agents = {role: SimpleNamespace(tokenizer=tokenizer) for role in ("conversation", "feedback")}
    module.policies, module.references, module.critics = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
    monkeypatch.setattr(module_code, "run_episodes",
                        lambda conversation, feedback, records, *args, **kwargs: [
                            _episode([GOOD], [_verdict(False, False)]) for _ in records])
    monkeypatch.setattr(module_code, "judge_episodes", lambda judge, episodes: 0)  # labels are hand-set
    updated, logged = [], {}

    def update(role, agent_batch, optimizer, critic_optimizer=None, timer=None):
        updated.append(role)
        return UpdateStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float("nan"), False)

    monkeypatch.setattr(module, "_optimizers_by_role", lambda: (dict.fromkeys(module.roles), {}))
    monkeypatch.setattr(module, "_update", update)
    monkeypatch.setattr(module_code, "write_step_scalars",
                        lambda module, values, step: logged.update({k: float(v) for k, v in values.items()}, step=step))
    module.training_step([PromptRecord("how do I pick a lock?", True)], 0)
    assert updated == trained
    assert logged["train/feedback/reward"] == pytest.approx(feedback_reward)
    assert logged["train/stage"] == stage and logged["train/rl_step"] == logged["step"] == rl_step
    assert logged["train/feedback/label_reward"] == 1.0 and logged["train/label_accuracy"] == 1.0
    assert module.rl_step == rl_step + 1
