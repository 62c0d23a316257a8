"""End to end through the real CLI on tiny models: metrics, frozen/trained weights, resume."""

from __future__ import annotations

import glob

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import REPO_ROOT
from waltzlit.cli import main

pytestmark = pytest.mark.integration

# A small, fast variant of conf/tiny.yaml: same code paths, fewer and shorter turns.
FAST = [
    "--model.conversation.warm_start.steps=60",
    "--model.feedback.warm_start.steps=60",
    "--model.rollout.conversation.max_new_tokens=24",
    "--model.rollout.feedback.max_new_tokens=64",
    "--model.schedule.log_transcripts_every=1",
    "--data.batch_size=6",
    "--data.val_holdout=6",
    "--data.val_batch_size=6",
    "--trainer.val_check_interval=2",
    "--trainer.enable_progress_bar=false",
]


class Snapshot(Callback):
    """Copies of every parameter right before training starts (after configure_model)."""

    def on_train_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def _fit(tmp_path, *extra: str, ckpt_path: str | None = None):
    args = ["fit", "--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *extra]
    cli = main(args=args[1:], run=False)
    snapshot = Snapshot()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli, snapshot


def _changed(snapshot, module, prefix: str) -> tuple[int, int]:
    names = [n for n in snapshot.before if n.startswith(prefix)]
    params = dict(module.named_parameters())
    changed = sum(not torch.equal(snapshot.before[n], params[n].detach()) for n in names)
    return changed, len(names)


def _scalar_tags(log_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        accumulator = EventAccumulator(event_file)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["tensors"])
    return tags


def test_stage1_then_resume_into_stage2(tmp_path, waltz_cache):
    # Run 1: stage 1 only (2 RL steps) -> only the feedback agent learns.
    cli, snap = _fit(tmp_path / "a", "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=2")
    module = cli.model
    assert module.rl_step == 2
    changed, total = _changed(snap, module, "policies.feedback.")
    assert changed == total > 0, f"only {changed}/{total} feedback parameters changed"
    assert _changed(snap, module, "policies.conversation.")[0] == 0, "stage 1 must freeze the conversation agent"
    assert _changed(snap, module, "references.")[0] == 0, "reference policies must stay frozen"

    tags = _scalar_tags(tmp_path / "a" / "runs")
    for tag in [
        "train/unsafe_rate_initial", "train/unsafe_rate_final", "train/overrefusal_rate_initial",
        "train/overrefusal_rate_final", "train/trigger_rate", "train/label_accuracy", "train/json_error_rate",
        "train/feedback/dir_mean", "train/feedback/reward", "train/conversation/reward_final",
        "train/feedback/update/kl", "train/feedback/update/clip_fraction", "train/feedback/update/entropy",
        "train/feedback/response_length", "train/conversation/response_length", "val/unsafe_rate_final",
    ]:
        assert tag in tags, f"{tag} missing from TensorBoard; have {sorted(tags)}"

    # Run 2: resume from the last checkpoint with a longer schedule -> RL steps 2..3 are stage 2.
    last = tmp_path / "a" / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    cli2, snap2 = _fit(
        tmp_path / "b", "--model.schedule.total_rl_steps=4", "--model.schedule.stage1_steps=2", ckpt_path=str(last)
    )
    module2 = cli2.model
    assert module2.rl_step == 4
    assert module2.stage == 2
    # The resumed run starts from run 1's weights, not from a fresh init.
    for name, value in snap2.before.items():
        if name.startswith("policies.feedback."):
            assert torch.equal(value, dict(module.named_parameters())[name].detach())
            break
    changed, total = _changed(snap2, module2, "policies.conversation.")
    assert changed == total > 0, "stage 2 must train the conversation agent"
    assert _changed(snap2, module2, "references.")[0] == 0
    tags = _scalar_tags(tmp_path / "b" / "runs")
    assert "train/conversation/update/loss" in tags
    # Both agents were exported in Hugging Face format.
    exported = list((tmp_path / "b" / "runs").glob("**/agents/*/config.json"))
    assert len(exported) == 2
