"""Wall-clock time per stage of one RL step, logged as ``time/<stage>`` scalars, and the tokens
each stage handled, logged as ``tokens/<stage>/<kind>`` (e.g. the prompt and generated tokens of a
rollout turn, the real and padded positions of a log-prob batch).

A stage that runs several times in a step (e.g. several feedback rounds) accumulates. On CUDA the
timer synchronises at both ends of a stage: kernels are asynchronous, and without the sync a stage
would be billed for the previous stage's queued work. On CPU nothing is synchronised (free).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class StageTimer:
    """Accumulates ``perf_counter`` seconds per stage name.

    Usage::

        timer = StageTimer(device)
        with timer("judge"):
            ...
        timer.durations  # {"judge": 0.012}
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.sync = device is not None and torch.device(device).type == "cuda"
        self.durations: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self._started = time.perf_counter()

    def _synchronize(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.durations[stage] = self.durations.get(stage, 0.0) + time.perf_counter() - start

    def count(self, stage: str, **values: float) -> None:
        """Add ``values`` (e.g. ``prompt=412, generated=96``) to the stage's token counts."""
        for kind, value in values.items():
            key = f"{stage}/{kind}"
            self.counts[key] = self.counts.get(key, 0.0) + float(value)

    def total(self) -> float:
        """Seconds since the timer was made (covers untimed glue between stages too)."""
        self._synchronize()
        return time.perf_counter() - self._started

    def scalars(self, prefix: str = "time/") -> dict[str, float]:
        """``{prefix + stage: seconds}`` plus ``prefix + "step"``, the whole interval so far, and
        ``{"tokens/" + stage + "/" + kind: count}``."""
        values = {f"{prefix}{stage}": seconds for stage, seconds in self.durations.items()}
        values[f"{prefix}step"] = self.total()
        values.update({f"tokens/{key}": count for key, count in self.counts.items()})
        return values


def count_tokens(timer: StageTimer | None, stage: str, **values: float) -> None:
    """``timer.count(stage, **values)``, or nothing when there is no timer."""
    if timer is not None:
        timer.count(stage, **values)


def timed(timer: StageTimer | None, stage: str):
    """``timer(stage)``, or a no-op context when there is no timer (callers outside training)."""
    return timer(stage) if timer is not None else contextlib.nullcontext()
