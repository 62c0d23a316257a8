"""AlgorithmConfig: validation naming the key, per-agent overrides, the KL placement warning."""

from __future__ import annotations

import warnings

import pytest

from waltzlit.config import AlgorithmConfig


def test_defaults_are_the_paper():
    algo = AlgorithmConfig()
    assert (algo.advantage_estimator, algo.kl_estimator, algo.kl_placement, algo.kl_coef) == (
        "reinforce_plus_plus", "k1", "reward", 0.01)
    assert algo.samples_per_prompt == 1 and algo.mini_batch_size is None and algo.entropy_coef == 0.0
    assert algo.dual_clip is None and not algo.uses_critic


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"])
def test_group_estimators_need_several_samples_per_prompt(estimator):
    with pytest.raises(ValueError, match="samples_per_prompt: .*>= 2"):
        AlgorithmConfig(advantage_estimator=estimator)
    assert AlgorithmConfig(advantage_estimator=estimator, samples_per_prompt=2).samples_per_prompt == 2


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"dual_clip": 0.9}, "dual_clip"),
        ({"kl_placement": "advantage"}, "kl_placement"),
        ({"loss_aggregation": "sum"}, "loss_aggregation"),
        ({"mini_batch_size": 0}, "mini_batch_size"),
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"value_clip": 0.0}, "value_clip"),
        ({"critic_lr": 0.0}, "critic_lr"),
        ({"entropy_coef": -0.1}, "entropy_coef"),
        ({"feedback_samples_per_response": 0}, "feedback_samples_per_response"),
        ({"advantage_estimator": "ppo_magic"}, "gae"),  # the message lists the known names
    ],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        AlgorithmConfig(**kwargs)


def test_agent_overrides_apply_to_one_agent_only():
    overrides = {"feedback": {"kl_placement": "loss", "kl_estimator": "k3", "clip_eps": 0.1}}
    algo = AlgorithmConfig(agent_overrides=overrides)
    feedback, conversation = algo.for_agent("feedback"), algo.for_agent("conversation")
    assert (feedback.kl_placement, feedback.kl_estimator, feedback.clip_eps) == ("loss", "k3", 0.1)
    assert (conversation.kl_placement, conversation.kl_estimator, conversation.clip_eps) == ("reward", "k1", 0.2)
    assert feedback.agent_overrides == {}


def test_a_critic_for_one_agent():
    algo = AlgorithmConfig(agent_overrides={"conversation": {"advantage_estimator": "gae"}})
    assert algo.for_agent("conversation").uses_critic and not algo.for_agent("feedback").uses_critic


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"judge": {"clip_eps": 0.1}}, "unknown agent 'judge'"),
        ({"feedback": {"no_such_key": 1}}, "cannot override"),
        ({"feedback": {"samples_per_prompt": 4}}, "cannot override"),  # the rollout is shared
        ({"feedback": {"clip_eps": 2.0}}, "agent_overrides.feedback.clip_eps"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        AlgorithmConfig(agent_overrides=overrides)


def test_unusual_kl_placements_warn():
    with pytest.warns(UserWarning, match="k1 in the reward or k2/k3 in the loss") as k1_in_loss:
        AlgorithmConfig(kl_placement="loss", kl_estimator="k1")
    with pytest.warns(UserWarning) as k3_in_reward:
        AlgorithmConfig(kl_estimator="k3")
    assert len(k1_in_loss) >= 1 and len(k3_in_reward) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlgorithmConfig(kl_placement="loss", kl_estimator="k2")
        AlgorithmConfig(kl_estimator="k3", kl_coef=0.0)  # no KL at all
