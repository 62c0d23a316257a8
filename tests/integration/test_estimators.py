"""Every advantage estimator trains both agents for two RL steps through the CLI, composed from
``conf/tiny.yaml`` and its ``conf/ablations/`` file."""

from __future__ import annotations

import glob

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.integration.cli_helpers import SHORT_TURNS, Snapshot, changed_parameters, scalar_tags
from waltzlit.cli import main

pytestmark = pytest.mark.integration

FAST = [
    *SHORT_TURNS,
    "--model.schedule.total_rl_steps=2",
    "--model.schedule.stage1_steps=0",  # stage 2 from the start: both agents train
    "--model.schedule.log_transcripts_every=0",
    "--trainer.limit_val_batches=0",
    "--data.val_holdout=6",  # as test_cli_fit: the same training prompts, so the same cached warm start
]

# Per estimator: a rollout of 8 episodes, and the options its ablation file leaves to test.
CASES = {
    "reinforce_plus_plus_baseline": ["--data.batch_size=4", "--model.algorithm.samples_per_prompt=2"],
    # n = 2 answers per prompt and m = 2 feedbacks per answer: 2 * 2 * 2 = 8 episodes
    "grpo": ["--data.batch_size=2", "--model.algorithm.samples_per_prompt=2",
             "--model.algorithm.feedback_samples_per_response=2", "--model.algorithm.entropy_coef=0.01"],
    "dr_grpo": ["--data.batch_size=4", "--model.algorithm.samples_per_prompt=2", "--model.algorithm.dual_clip=3"],
    "rloo": ["--data.batch_size=4", "--model.algorithm.samples_per_prompt=2", "--model.algorithm.mini_batch_size=4",
             "--model.algorithm.micro_batch_size=2"],
    "gae": ["--data.batch_size=8", "--model.algorithm.critic_lr=1e-3", "--model.algorithm.update_epochs=2"],
}


@pytest.mark.parametrize("estimator", sorted(CASES))
def test_estimator_trains_both_agents_through_the_cli(estimator, tmp_path, waltz_cache):
    ablation = REPO_ROOT / f"conf/ablations/{estimator}.yaml"
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), "--config", str(ablation), *FAST, *CASES[estimator],
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    cli = main(args=args, run=False)
    snapshot = Snapshot()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    module = cli.model
    assert module.rl_step == 2 and module.algorithm.advantage_estimator == estimator

    for role in ("conversation", "feedback"):
        changed, total = changed_parameters(snapshot, module, f"policies.{role}.")
        assert changed == total > 0, f"{estimator}: only {changed}/{total} {role} parameters changed"
    assert changed_parameters(snapshot, module, "references.")[0] == 0

    tags = scalar_tags(tmp_path / "runs")
    expected = [f"train/{role}/update/{key}" for role in ("conversation", "feedback")
                for key in ("loss", "advantage_abs", "grad_norm", "optimizer_steps")]
    if module.algorithm.kl_placement == "loss":
        expected.append("train/feedback/update/kl_loss")
    if estimator == "gae":
        expected += [f"train/{role}/update/{key}" for role in ("conversation", "feedback")
                     for key in ("value_loss", "explained_variance", "critic_grad_norm")]
    missing = [tag for tag in expected if tag not in tags]
    assert not missing, f"{missing} not logged; have {sorted(tags)}"

    if estimator == "gae":
        for role in ("conversation", "feedback"):
            changed, total = changed_parameters(snapshot, module, f"critics.{role}.")
            assert changed == total > 0, f"only {changed}/{total} {role} critic parameters changed"
        # The critics and their optimizers are in the checkpoint (conversation, feedback, then critics).
        (last,) = glob.glob(f"{tmp_path}/runs/**/last.ckpt", recursive=True)
        checkpoint = torch.load(last, weights_only=False)
        assert "critics.feedback.value_head.weight" in checkpoint["state_dict"]
        assert len(checkpoint["optimizer_states"]) == 4
