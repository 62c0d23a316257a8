"""Stage-wise prompt batches: deterministic per RL step, disjoint halves, exact on resume."""

from __future__ import annotations

import pytest

from waltzlit.data.datamodule import PromptDataModule, stage_batch


def test_stage_batch_is_a_pure_function_covering_each_pass():
    first_pass = [i for step in range(5) for i in stage_batch(10, 2, seed=0, stage=1, step_in_stage=step)]
    assert sorted(first_pass) == list(range(10))  # 5 batches of 2 = one permutation of the pool of 10
    assert stage_batch(10, 2, 0, 1, 3) == stage_batch(10, 2, 0, 1, 3)
    assert stage_batch(10, 2, 0, 1, 5) != stage_batch(10, 2, 1, 1, 5)  # another seed, another order
    # A batch larger than the pool wraps into the next pass.
    assert len(stage_batch(3, 5, 0, 1, 0)) == 5


def _module(**kwargs):
    dm = PromptDataModule(batch_size=4, val_holdout=8, **kwargs)
    dm.setup("fit")
    return dm


def test_stage_halves_are_disjoint_and_validation_is_held_out():
    dm = _module()
    first = {r.prompt for r in dm.stage_pools[1]}
    second = {r.prompt for r in dm.stage_pools[2]}
    val = {r.prompt for r in dm.val_records}
    assert first and second and not first & second
    assert len(val) == 8 and not val & (first | second)
    assert any(r.prompt_harmful for r in dm.stage_pools[1]) and any(not r.prompt_harmful for r in dm.stage_pools[1])


def _attach(dm, rl_step: int, stage1_steps: int) -> None:
    """The datamodule reads the RL step and the schedule from the trainer's module."""
    from types import SimpleNamespace

    from waltzlit.config import ScheduleConfig

    module = SimpleNamespace(rl_step=rl_step, schedule=ScheduleConfig(total_rl_steps=10, stage1_steps=stage1_steps))
    dm.trainer = SimpleNamespace(lightning_module=module, global_rank=0, world_size=1)


def test_batches_follow_the_rl_step_and_stage():
    from waltzlit.config import ScheduleConfig

    dm = _module()
    stage1_steps = 3
    _attach(dm, 0, stage1_steps)
    loader = iter(dm.train_dataloader())
    uninterrupted = [next(loader) for _ in range(6)]
    stage1 = {r.prompt for r in dm.stage_pools[1]}
    assert all(r.prompt in stage1 for b in uninterrupted[:3] for r in b)
    assert all(r.prompt not in stage1 for b in uninterrupted[3:] for r in b)
    # Two data-parallel ranks split every global batch between them, disjointly.
    from waltzlit.data.datamodule import StagePromptStream

    schedule = (lambda: 0, ScheduleConfig(total_rl_steps=10, stage1_steps=stage1_steps))
    ranks = [next(iter(StagePromptStream(dm.stage_pools, 4, dm.seed, *schedule, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(r.prompt for part in ranks for r in part) == sorted(r.prompt for r in uninterrupted[0])
    with pytest.raises(ValueError, match="data.batch_size"):
        StagePromptStream(dm.stage_pools, 5, dm.seed, *schedule, rank=0, world_size=2)
    # Resuming at step 4 yields exactly what the uninterrupted run saw at step 4.
    _attach(dm, 4, stage1_steps)
    resumed = iter(dm.train_dataloader())
    assert next(resumed) == uninterrupted[4] and next(resumed) == uninterrupted[5]


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="data.batch_size"):
        PromptDataModule(batch_size=0)
    with pytest.raises(ValueError, match="data.val_holdout"):
        _module_with_holdout = PromptDataModule(val_holdout=10_000)
        _module_with_holdout.setup("fit")


def test_an_empty_source_list_is_an_error_not_the_builtin_prompts():
    with pytest.raises(ValueError, match="data.train_sources: an empty list"):
        PromptDataModule(train_sources=[])
