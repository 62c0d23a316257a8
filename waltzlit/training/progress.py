"""Progress in RL steps, the run's unit of work: ``RL step 12/150 [stage 1]`` with an ETA.

Lightning's bar counts batches of an epoch that never ends here (``Epoch 0/-2 … 30/--``). This
bar counts RL steps out of ``schedule.total_rl_steps`` (a resumed run starts at its step), names
the stage and shows the key rates. When stderr is not a terminal (a log file, CI, ``nohup``) it
writes a plain log line every ``log_every`` steps instead of redrawing a bar.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_info

SHOWN = {
    "train/unsafe_rate_final": "unsafe",
    "train/overrefusal_rate_final": "overrefuse",
    "train/feedback/reward": "fb_reward",
}
"""Scalars shown next to the bar (short names)."""


def format_eta(seconds: float) -> str:
    """``3725.0`` -> ``"1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RLProgressBar(TQDMProgressBar):
    """A bar over RL steps with stage and ETA; log lines instead when stderr is not a terminal."""

    def __init__(self, refresh_rate: int = 1, log_every: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self.log_every = log_every
        self._interactive = sys.stderr.isatty()
        self._started: tuple[float, int] | None = None
        if not self._interactive:
            self.disable()  # the bars exist (Lightning's hooks expect them) but draw nothing

    @staticmethod
    def _steps(pl_module) -> tuple[int, int]:
        return int(getattr(pl_module, "rl_step", 0)), int(pl_module.schedule.total_rl_steps)

    def _rates(self, trainer) -> dict[str, str]:
        metrics = trainer.callback_metrics
        return {short: f"{float(metrics[key]):.2f}" for key, short in SHOWN.items() if key in metrics}

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        """The bar's postfix: the key rates under short names (no version number)."""
        return self._rates(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        done, total = self._steps(pl_module)
        self._started = (time.perf_counter(), done)
        super().on_train_start(trainer, pl_module)
        if not self._interactive:
            rank_zero_info(f"training from RL step {done} of {total}, stage {pl_module.stage}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        done, total = self._steps(pl_module)
        bar = self.train_progress_bar
        bar.reset(total=total)
        bar.n = bar.initial = done
        bar.set_description(f"RL step [stage {pl_module.stage}]")
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done, total = self._steps(pl_module)
        if self._interactive:
            bar = self.train_progress_bar
            bar.n = done
            bar.set_description(f"RL step [stage {pl_module.schedule.stage_at(max(0, done - 1))}]")
            bar.set_postfix(self._rates(trainer), refresh=False)
            bar.refresh()
            return
        if done % self.log_every == 0 or done == total:
            start_time, start_step = self._started or (time.perf_counter(), done)
            per_step = (time.perf_counter() - start_time) / max(1, done - start_step)
            rates = " ".join(f"{k} {v}" for k, v in self._rates(trainer).items())
            stage = pl_module.schedule.stage_at(max(0, done - 1))
            rank_zero_info(f"RL step {done}/{total} [stage {stage}] {rates} | {per_step:.1f} s/step, "
                           f"ETA {format_eta(per_step * (total - done))}")
