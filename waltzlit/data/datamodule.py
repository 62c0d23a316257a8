"""PromptDataModule: batches of prompt records, from the stage's half of the prompt pool.

The pool is split into two disjoint halves, one per training stage (paper §2.4, App. B.1). The
batch for RL step s is a pure function of (seed, stage, s): a pass over the stage's half is a
seeded permutation, cut into batches. Resuming a run at step s therefore continues with exactly
the prompts an uninterrupted run would have seen, without any sampler state in the checkpoint.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Protocol

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset

from waltzlit.data.sources import PromptSourceConfig, build_prompt_pool, split_for_stages
from waltzlit.data.validation import check_local_paths
from waltzlit.types import PromptRecord

log = logging.getLogger(__name__)


class _Records(Dataset):
    def __init__(self, records: list[PromptRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


class PromptBatch:
    """One step's prompt records, opaque to Lightning's precision plugins.

    ``bf16-true``/``16-true`` run ``apply_to_collection`` over every batch to cast tensors, which
    recurses into sequences and rebuilds dataclasses, and ``PromptRecord`` is frozen: a plain list
    of records crashed there. This class is neither a ``Sequence`` nor a dataclass, so the plugins
    pass it through; it iterates, indexes and measures like the list it holds.
    """

    __slots__ = ("records",)

    def __init__(self, records) -> None:
        self.records = list(records)

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (PromptBatch, list)) else NotImplemented

    def __repr__(self) -> str:
        return f"PromptBatch({self.records!r})"


def _collate(records: list[PromptRecord]) -> PromptBatch:
    return PromptBatch(records)


def stage_batch(pool_size: int, batch_size: int, seed: int, stage: int, step_in_stage: int) -> list[int]:
    """Indices into a stage's pool for its ``step_in_stage``-th batch.

    Each pass over the pool is a fresh seeded permutation; a pool smaller than a batch is reused
    within the batch. Pure: the same arguments always give the same indices.
    """
    indices: list[int] = []
    position = step_in_stage * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position, pool_size)
        order = list(range(pool_size))
        random.Random(f"{seed}/{stage}/{epoch}").shuffle(order)
        take = min(batch_size - len(indices), pool_size - offset)
        indices.extend(order[offset : offset + take])
        position += take
    return indices


class StageSchedule(Protocol):
    """Which stage an RL step is in, and where a stage starts (``ScheduleConfig`` is one)."""

    def stage_at(self, rl_step: int) -> int: ...

    def stage_start(self, stage: int) -> int: ...


class _OneStage:
    """The schedule without a training module: every step is stage 1."""

    def stage_at(self, rl_step: int) -> int:
        return 1

    def stage_start(self, stage: int) -> int:
        return 0


class StagePromptStream(IterableDataset):
    """Endless prompt batches for consecutive RL steps, starting at the step the run is at.

    An iterable dataset rather than a sampler: Lightning leaves its order alone under distributed
    strategies, and each data-parallel rank takes its own slice of every global batch.

    Args:
        pools: the stage-1 and stage-2 halves of the prompt pool.
        batch_size: prompts per RL step over all ranks.
        first_step: returns the RL step the next batch is for (read when iteration starts, i.e.
            after a checkpoint was restored).
        schedule: ``stage_at(rl_step)`` (1 or 2) and ``stage_start(stage)`` (its first RL step),
            e.g. the module's ``ScheduleConfig``.
        rank, world_size: this process's data-parallel rank and the number of ranks.
    """

    def __init__(
        self,
        pools: dict[int, list[PromptRecord]],
        batch_size: int,
        seed: int,
        first_step: Callable[[], int],
        schedule: StageSchedule,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"data.batch_size: {batch_size} is not divisible by the {world_size} data-parallel ranks")
        self.pools, self.batch_size, self.seed = pools, batch_size, seed
        self.first_step, self.schedule = first_step, schedule
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[PromptRecord]]:
        step = self.first_step()
        while True:
            stage = self.schedule.stage_at(step)
            pool = self.pools[stage]
            indices = stage_batch(len(pool), self.batch_size, self.seed, stage, step - self.schedule.stage_start(stage))
            yield [pool[i] for i in indices[self.rank :: self.world_size]]
            step += 1


class PromptDataModule(LightningDataModule):
    """Prompt records for rollouts; the model never sees responses from here.

    Args:
        train_sources: prompt sources of the training pool (split into the two stage halves).
        val_sources: prompt sources for validation; when empty, ``val_holdout`` prompts of the
            training pool are held out instead.
        batch_size: prompts per RL step (paper: rollout batch 32).
        val_batch_size: prompts per validation rollout batch.
        val_holdout: prompts taken out of the training pool for validation when no ``val_sources``.
        seed: seed of pooling, splitting and batch order.
        deduplicate: drop repeated prompts (normalised text) from the pool.
        exclude_sources: sources whose prompts are removed from the training pool (e.g. evaluation
            sets such as OR-Bench-Hard-1K out of OR-Bench-80K).
    """

    def __init__(
        self,
        train_sources: list[PromptSourceConfig] | None = None,
        val_sources: list[PromptSourceConfig] | None = None,
        batch_size: int = 32,
        val_batch_size: int = 32,
        val_holdout: int = 0,
        seed: int = 0,
        deduplicate: bool = True,
        exclude_sources: list[PromptSourceConfig] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size: must be >= 1, got {batch_size}")
        if val_holdout < 0:
            raise ValueError(f"data.val_holdout: must be >= 0, got {val_holdout}")
        if train_sources is not None and not train_sources:
            raise ValueError("data.train_sources: an empty list; give at least one prompt source, or leave the key "
                             "out for the built-in prompts")
        if train_sources is None:
            log.info("data.train_sources not set: training on the built-in prompt set (%s)", "waltzlit/data/builtin.py")
        self.train_sources = train_sources or [PromptSourceConfig(name="builtin")]
        self.val_sources = val_sources or []
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.val_holdout, self.seed = val_holdout, seed
        self.deduplicate = deduplicate
        self.exclude_sources = exclude_sources or []
        # Missing local files fail here, at configuration time, not after minutes of hub downloads.
        for key, sources in (("data.train_sources", self.train_sources), ("data.val_sources", self.val_sources),
                             ("data.exclude_sources", self.exclude_sources)):
            check_local_paths(sources, key)
        self.stage_pools: dict[int, list[PromptRecord]] = {}
        self.val_records: list[PromptRecord] = []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # prompt records are text; token ids go to the device where they are made

    def setup(self, stage: str | None = None) -> None:
        if self.stage_pools:
            return
        pool = build_prompt_pool(self.train_sources, seed=self.seed, deduplicate=self.deduplicate, exclude=self.exclude_sources)
        if self.val_sources:
            # No de-duplication across evaluation sets: each benchmark is scored whole.
            self.val_records = build_prompt_pool(self.val_sources, seed=self.seed, deduplicate=False)
        elif self.val_holdout:
            if self.val_holdout >= len(pool):
                raise ValueError(f"data.val_holdout: {self.val_holdout} is not smaller than the pool ({len(pool)})")
            shuffled = list(pool)
            random.Random(f"{self.seed}/holdout").shuffle(shuffled)
            self.val_records, pool = shuffled[: self.val_holdout], shuffled[self.val_holdout :]
        first, second = split_for_stages(pool, seed=self.seed)
        self.stage_pools = {1: first, 2: second}

    def train_records(self) -> list[PromptRecord]:
        """Every training prompt, both stages."""
        return self.stage_pools[1] + self.stage_pools[2]

    def train_dataloader(self) -> DataLoader:
        for stage, pool in self.stage_pools.items():
            if not pool:
                raise ValueError(f"data.train_sources: the stage-{stage} half of the prompt pool is empty")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # The RL step and the stage schedule are the training module's (read through the trainer, and
        # the step only when iteration starts, i.e. after a checkpoint was restored).
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        schedule = getattr(module, "schedule", None) or _OneStage()
        stream = StagePromptStream(
            self.stage_pools, self.batch_size, self.seed, lambda: int(getattr(module, "rl_step", 0)), schedule,
            rank=rank, world_size=world,
        )
        return DataLoader(stream, batch_size=None, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        if not self.val_records:
            return []  # Lightning skips validation when there is no batch
        return DataLoader(_Records(self.val_records), batch_size=self.val_batch_size, shuffle=False, collate_fn=_collate)
