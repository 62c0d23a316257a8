"""Never lose a run: atomic checkpoint files, ``last.ckpt`` every N RL steps and on SIGTERM, safe loads.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target folder and
  renames it into place (``os.replace`` is atomic on POSIX), so a crash or a full disk during a save
  leaves the previous ``last.ckpt`` as it was. It loads with ``torch.load(weights_only=True)``: a
  checkpoint can hold tensors and plain Python values only, never code. A file that needs more
  stops the run; only ``weights_only: false`` together with ``WALTZLIT_TRUST_CHECKPOINT_CODE=1``
  loads it.
* :class:`WaltzCheckpoint` (the CLI's ``checkpoint:`` section) is Lightning's ``ModelCheckpoint``
  plus ``every_n_rl_steps``: ``trainer.global_step`` counts optimizer steps (one per RL step in
  stage 1, two in stage 2), so ``every_n_train_steps`` cannot say "after every RL step". It also
  writes ``last.ckpt`` when SIGTERM arrives (Lightning itself only stops the loop) and installs
  :class:`AtomicCheckpointIO` on the strategy.

Exact resume rests on three more facts: batches are a pure function of (seed, stage, rl_step)
(``data/datamodule.py``); the module checkpoints ``rl_step`` (hence the stage) and the torch RNG
state, and seeds each RL step's stream with :func:`step_seed` (``training/module.py``); validation
runs on a seeded fork (:func:`isolated_rng`), so that it never moves the training stream, whether
or not a resumed run repeats it. Lightning restores optimizers and loop counters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import logging
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- checkpoint files
def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk, not only the file."""
    with contextlib.suppress(OSError):  # some filesystems (and Windows) cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists but belongs to someone else
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of writers that died mid-save (SIGKILL, OOM): for large models they are
    as big as a checkpoint, and nothing will ever rename them into place."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = stale.name[len(target.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and whose loads default to ``weights_only``.

    Remote paths (``s3://`` ...) fall back to Lightning's save: object stores replace whole objects
    on upload anyway.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        # Same folder as the target: os.replace is only atomic within one filesystem.
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _fsync_directory(target.parent)

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always the safe load (``weights_only=True``; None, the caller's "no choice", too). A file
        that does not load safely stops the run: ``weights_only: false`` alone does not unlock it,
        only ``WALTZLIT_TRUST_CHECKPOINT_CODE=1`` does (unpickling runs code stored in the file)."""
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            if weights_only is False and os.environ.get(TRUST_CHECKPOINT_CODE) == "1":
                log.warning("%s: loading with code execution allowed (%s=1)", path, TRUST_CHECKPOINT_CODE)
                return super().load_checkpoint(path, map_location=map_location, weights_only=False)
            raise UnsafeCheckpointError(
                f"{path} does not load with torch.load(weights_only=True): {str(error).splitlines()[0]}. Loading it "
                "otherwise would run code stored in the file, so waltzlit refuses. Checkpoints written by waltzlit "
                f"always load safely; for a file you made and trust, set {TRUST_CHECKPOINT_CODE}=1 and pass "
                "weights_only: false."
            ) from error


TRUST_CHECKPOINT_CODE = "WALTZLIT_TRUST_CHECKPOINT_CODE"
"""Environment variable that allows, with ``weights_only: false``, a checkpoint that runs code on load."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that can only be loaded by running code stored in it."""


def plain_values(value: Any) -> Any:
    """``value`` with every dataclass turned into a dict (recursively), for ``weights_only`` loads.

    Hyper-parameters of a module built in Python hold config dataclasses; the unpickler of
    ``torch.load(weights_only=True)`` refuses any class it does not know, so they are stored as dicts.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_values(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_values(v) for v in value]
    if isinstance(value, tuple):  # named tuples too: the weights_only unpickler knows plain tuples only
        return tuple(plain_values(v) for v in value)
    return value


# ----------------------------------------------------------------------------- random state
def step_seed(seed: int, rl_step: int, purpose: str, rank: int = 0, batch_idx: int = 0) -> int:
    """A 63-bit seed for one RL step's ``purpose`` ("train", "val") on one data-parallel rank."""
    digest = hashlib.sha256(f"{seed}/{rl_step}/{purpose}/{rank}/{batch_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_step(value: int) -> None:
    """Seed torch's global RNG (CPU and every CUDA device) for one RL step.

    Each RL step draws from its own seeded stream, so a resumed run repeats it bit for bit whatever
    consumed the global RNG in between (data-loader iterators, validation, callbacks); the RNG state
    in the checkpoint is then a second line of defence, not the only one.
    """
    torch.manual_seed(value)


@contextlib.contextmanager
def isolated_rng(value: int) -> Iterator[None]:
    """Run a block on a seeded fork of torch's RNG and restore the outer state afterwards.

    For validation: its samples then depend only on the RL step, and running it (or skipping it, as
    a resumed run does at the step it resumes from) never moves the training stream.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(value)
        yield


# ----------------------------------------------------------------------------- the callback
def optimizer_steps_needed(total_rl_steps: int, stage1_steps: int, agents: int = 2) -> int:
    """The fewest optimizer steps (``trainer.global_step``) of a whole run: one per trained agent per
    RL step (stage 1 trains the feedback agent only). More update epochs, mini-batches or critics
    only add steps, so a ``max_steps`` below this always ends the run early."""
    stage1 = min(stage1_steps, total_rl_steps)
    return stage1 + agents * (total_rl_steps - stage1)


def check_trainer_limits(trainer: Trainer, module: LightningModule) -> None:
    """Refuse ``trainer.max_steps`` values that would end the run before ``schedule.total_rl_steps``.

    ``max_steps`` counts optimizer steps, so a value that looks like an RL step count silently stops
    the run early, often before the stage switch. Called in ``setup``, before any model is loaded.
    """
    schedule = getattr(module, "schedule", None)
    if schedule is None or trainer.max_steps in (-1, None):
        return
    agents = len(getattr(module, "roles", ("conversation", "feedback")))
    needed = optimizer_steps_needed(schedule.total_rl_steps, schedule.stage1_steps, agents)
    if trainer.max_steps < needed:
        where = "before the stage switch" if trainer.max_steps < schedule.stage1_steps else "early"
        raise ValueError(
            f"trainer.max_steps: {trainer.max_steps} optimizer steps would end the run {where}; the schedule "
            f"(model.schedule.total_rl_steps={schedule.total_rl_steps}, stage1_steps={schedule.stage1_steps}) needs "
            f"at least {needed}. Allowed: -1 (default; the run ends at total_rl_steps) or >= {needed}. "
            "Set the run length with model.schedule.total_rl_steps."
        )


class WaltzCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` every ``every_n_rl_steps`` RL steps and on SIGTERM.

    Every option of ``ModelCheckpoint`` keeps its meaning (``every_n_train_steps`` still counts
    optimizer steps). The extra saves go to the ``last`` checkpoint only (``save_last``, on in the
    CLI), written after the RL step's updates and before its validation; a resumed run continues
    with the next RL step.

    Args:
        every_n_rl_steps: write ``last.ckpt`` after every this many RL steps (and after the final
            one); ``None`` or 0 turns this off. Every step costs a full save: raise it for large models.
        save_on_sigterm: on SIGTERM (what schedulers send before killing a job), write ``last.ckpt``
            at the end of the current RL step, then stop.
        **kwargs: the arguments of ``lightning.pytorch.callbacks.ModelCheckpoint``.
    """

    def __init__(self, every_n_rl_steps: int | None = 1, save_on_sigterm: bool = True, **kwargs: Any) -> None:
        if every_n_rl_steps is not None and every_n_rl_steps < 0:
            raise ValueError(f"checkpoint.every_n_rl_steps: must be >= 0 or null, got {every_n_rl_steps}")
        super().__init__(**kwargs)
        self.every_n_rl_steps = every_n_rl_steps or 0
        self.save_on_sigterm = save_on_sigterm
        self._last_rl_step_saved: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        check_trainer_limits(trainer, pl_module)
        # Only the plain torch writer is swapped: other strategies (FSDP, DeepSpeed) or a user's
        # own CheckpointIO write in their own way.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    @staticmethod
    def _sigterm(trainer: Trainer) -> bool:
        """Whether any rank received SIGTERM. Ranks must agree: a save waits at a barrier for all of
        them, and a rank that missed the signal would train on while the others exit."""
        local = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size <= 1:
            return local
        decided = trainer.strategy.reduce_boolean_decision(local, all=False)
        if decided and not local and hasattr(trainer, "_signal_connector"):
            # Stop with the others after this step. Lightning has no public way to mark a rank as
            # signalled; its loop raises SIGTERMException on ranks whose connector says so.
            trainer._signal_connector.received_sigterm = True
        return decided

    def _due(self, sigterm: bool, rl_step: int, total: int | None) -> str | None:
        """Why ``last.ckpt`` must be written now, or None."""
        if self.save_on_sigterm and sigterm:
            return "SIGTERM"
        if self.every_n_rl_steps and rl_step % self.every_n_rl_steps == 0:
            return "schedule"
        if self.every_n_rl_steps and total is not None and rl_step >= total:
            return "final step"
        return None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        rl_step = getattr(pl_module, "rl_step", None)
        if rl_step is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        schedule = getattr(pl_module, "schedule", None)
        sigterm = self.save_on_sigterm and self._sigterm(trainer)
        reason = self._due(sigterm, rl_step, getattr(schedule, "total_rl_steps", None))
        if reason is None:
            return
        if self._last_rl_step_saved != rl_step:
            self.save_last_now(trainer, rl_step)
        # On SIGTERM Lightning raises SIGTERMException once this batch is done (on_exception below
        # reports it). No should_stop here: it would run a full validation first.

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not getattr(pl_module, "finished_before_start", False):  # a finished run resumed: nothing new to save
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not getattr(pl_module, "finished_before_start", False):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not getattr(pl_module, "finished_before_start", False):
            super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # SIGTERM during validation stops the loop before the step's save when every_n_rl_steps
        # did not fall on this step; the weights are those of the finished RL step, so save them.
        rl_step = getattr(pl_module, "rl_step", None)
        if isinstance(exception, SIGTERMException) and self.save_on_sigterm and rl_step is not None:
            if self._last_rl_step_saved != rl_step and rl_step > 0:
                self.save_last_now(trainer, rl_step)
            log.warning("SIGTERM: stopping after RL step %d; resume with --ckpt_path %s", rl_step, self.last_model_path)
        if isinstance(exception, SIGTERMException) and exception.code is None:
            # Lightning's SystemExit carries no code, i.e. status 0: a job script's `fit && evaluate`
            # would carry on with a half-trained run. Exit as a process killed by SIGTERM does.
            exception.code = 128 + signal.SIGTERM

    def save_last_now(self, trainer: Trainer, rl_step: int) -> None:
        """Write ``last.ckpt`` (atomically) without touching Lightning's own top-k bookkeeping."""
        if not self.save_last:
            return
        # _save_last_checkpoint handles the file name, versioning and links; it also records the
        # global step as saved, which would suppress the top-k save of a validation at this step
        # (monitored checkpoints), so that record is put back.
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_step
        self._last_rl_step_saved = rl_step
