"""What the CLI integration tests share: fast overrides of the tiny recipe, a parameter snapshot,
and readers of what a run left behind."""

from __future__ import annotations

import glob

import torch
from lightning.pytorch import Callback

SHORT_TURNS = [
    "--model.conversation.warm_start.steps=60",
    "--model.feedback.warm_start.steps=60",
    "--model.rollout.conversation.max_new_tokens=24",
    "--model.rollout.feedback.max_new_tokens=64",
    "--trainer.enable_progress_bar=false",
]
"""conf/tiny.yaml with a shorter warm start and shorter turns: the same code paths, faster."""

FAST = [
    *SHORT_TURNS,
    "--model.schedule.log_transcripts_every=1",
    "--data.batch_size=6",
    "--data.val_holdout=6",
    "--data.val_batch_size=6",
    "--trainer.val_check_interval=2",
]
"""SHORT_TURNS plus small batches and a validation every 2 RL steps."""


class Snapshot(Callback):
    """Copies of every parameter right before training starts (after configure_model)."""

    def on_train_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def changed_parameters(snapshot: Snapshot, module, prefix: str) -> tuple[int, int]:
    """(how many parameters under ``prefix`` changed since the snapshot, how many there are)."""
    names = [n for n in snapshot.before if n.startswith(prefix)]
    params = dict(module.named_parameters())
    changed = sum(not torch.equal(snapshot.before[n], params[n].detach()) for n in names)
    return changed, len(names)


def scalar_tags(log_dir) -> set[str]:
    """Every scalar and tensor tag in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        accumulator = EventAccumulator(event_file)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["tensors"])
    return tags
