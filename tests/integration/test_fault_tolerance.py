"""A run survives crashes, SIGTERM, SIGKILL, a failing judge and NaN rewards (the CLI on tiny models).

Exact resume is checked bit for bit on CPU: every scalar the resumed run logs to TensorBoard, and
every weight and optimizer moment at the end, equal those of an uninterrupted run (tolerance 0).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import REPO_ROOT
from tests.integration.cli_helpers import FAST, Snapshot
from tests.unit.test_http_judge import server  # noqa: F401  (fixture: a chat-completions server that can fail)
from waltzlit.cli import main
from waltzlit.judges import JudgeError

pytestmark = pytest.mark.integration

# Four RL steps, the stage switch after two, validation after the 2nd and 4th, last.ckpt every step.
SCHEDULE = ["--model.schedule.total_rl_steps=4", "--model.schedule.stage1_steps=2", "--checkpoint.every_n_rl_steps=1"]


def _args(root, *extra: str) -> list[str]:
    return ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, *SCHEDULE, f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root / 'runs'}", *extra]


def _fit(root, *extra: str, ckpt_path=None, callbacks=(), weights_only=None):
    cli = main(args=_args(root, *extra), run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=weights_only)
    return cli


def _last(root):
    found = glob.glob(f"{root}/runs/**/checkpoints/last.ckpt", recursive=True)
    assert len(found) == 1, found
    return found[0]


def _scalars(root) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for event_file in glob.glob(f"{root}/**/events.out.tfevents.*", recursive=True):
        accumulator = EventAccumulator(event_file, size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag != "hp_metric":
                values.update({(tag, e.step): e.value for e in accumulator.Scalars(tag)})
    return values


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _assert_resumed_exactly(reference_cli, reference_root, resumed_cli, *partial_roots):
    """Scalars step by step, weights and optimizer states: equal, tolerance 0."""
    expected = _scalars(reference_root)
    seen: dict[tuple[str, int], float] = {}
    for root in partial_roots:
        seen.update(_scalars(root))
    assert seen, "no scalars were logged"
    # time/* are wall-clock durations; a validation the uninterrupted run did not have is the
    # extra one Lightning runs when a shorter run stops between validation intervals.
    compared = {k: v for k, v in seen.items() if not k[0].startswith("time/")}
    extra_val = {k for k in compared if k not in expected and k[0].startswith("val/")}
    mismatched = {
        k: (expected.get(k), v)
        for k, v in compared.items()
        if k not in extra_val and not _same(expected.get(k, math.inf), v)
    }
    assert not mismatched, f"resumed run differs from the uninterrupted one: {mismatched}"
    train_tags = {k for k in expected if k[0].startswith("train/")}
    assert train_tags <= set(seen), f"steps never logged: {sorted(train_tags - set(seen))}"

    a, b = reference_cli.model, resumed_cli.model
    assert (a.rl_step, a.stage) == (b.rl_step, b.stage) == (4, 2)
    params_b = dict(b.named_parameters())
    for name, value in a.named_parameters():
        assert torch.equal(value, params_b[name]), name
    for opt_a, opt_b in zip(reference_cli.trainer.optimizers, resumed_cli.trainer.optimizers):
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert state_a.keys() == state_b.keys() and state_a
        for key in state_a:
            for field, tensor in state_a[key].items():
                assert torch.equal(tensor, state_b[key][field]), (key, field)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, waltz_cache):
    root = tmp_path_factory.mktemp("uninterrupted")
    return _fit(root), root


class CrashAt(Callback):
    """Dies at the start of RL step ``step``, after the checkpoint of the step before was written."""

    class Crash(Exception):
        pass

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.rl_step == self.step:
            raise self.Crash(f"simulated crash at RL step {self.step}")


# step 2: the checkpoint was rewritten after validation and the resumed run starts stage 2;
# step 3: the conversation agent's optimizer already has moments to restore.
@pytest.mark.parametrize("crash_at", [2, 3])
def test_crash_then_resume_matches_an_uninterrupted_run_exactly(crash_at, uninterrupted, tmp_path):
    reference_cli, reference_root = uninterrupted
    with pytest.raises(CrashAt.Crash):
        _fit(tmp_path / "a", callbacks=[CrashAt(crash_at)])
    last = _last(tmp_path / "a")
    state = torch.load(last, weights_only=True)  # also proves the checkpoint is weights_only-safe
    assert state["waltzlit"]["rl_step"] == crash_at
    resumed = _fit(tmp_path / "b", ckpt_path=last, weights_only=True)
    _assert_resumed_exactly(reference_cli, reference_root, resumed, tmp_path / "a", tmp_path / "b")


def test_short_run_continued_with_ckpt_path_matches(uninterrupted, tmp_path):
    """The documented two-run flow (a shorter run, then --ckpt_path with a longer schedule). The
    first run stops between validation intervals, so Lightning validates once more before it ends
    and rewrites last.ckpt after that; from such a checkpoint its own step counter comes back one
    too low, which the checkpoint callback corrects."""
    _fit(tmp_path / "a", "--model.schedule.total_rl_steps=1")
    resumed = _fit(tmp_path / "b", ckpt_path=_last(tmp_path / "a"))
    reference_cli, reference_root = uninterrupted
    _assert_resumed_exactly(reference_cli, reference_root, resumed, tmp_path / "a", tmp_path / "b")


class SendSigterm(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.rl_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before it kills the job


def test_sigterm_saves_last_ckpt_at_the_end_of_the_step_and_stops(uninterrupted, tmp_path):
    # every_n_rl_steps=0: the only checkpoint written can come from the SIGTERM.
    with pytest.raises(SystemExit) as info:
        _fit(tmp_path / "a", "--checkpoint.every_n_rl_steps=0", callbacks=[SendSigterm(0)])
    assert info.value.code == 128 + signal.SIGTERM, "exit as killed by SIGTERM, not with status 0"
    last = _last(tmp_path / "a")
    assert torch.load(last, weights_only=True)["waltzlit"]["rl_step"] == 1
    resumed = _fit(tmp_path / "b", ckpt_path=last)
    reference_cli, reference_root = uninterrupted
    _assert_resumed_exactly(reference_cli, reference_root, resumed, tmp_path / "a", tmp_path / "b")


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_failing_judge_stops_the_run_naming_the_endpoint_with_the_checkpoint_intact(server, tmp_path, waltz_cache):
    class BreakJudge(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if pl_module.rl_step == 1:
                self.digest = _digest(_last(tmp_path))
                self.requests = len(server.requests)
                server.mode = "500"

    breaker = BreakJudge()
    judge = ["--model.judge.class_path=waltzlit.judges.OpenAIChatJudge",
             f"--model.judge.init_args.base_url={server.base_url}", "--model.judge.init_args.max_retries=2",
             "--model.judge.init_args.backoff_s=0.01", "--model.judge.init_args.max_concurrency=1"]
    with pytest.raises(JudgeError) as info:
        _fit(tmp_path, *judge, callbacks=[breaker])
    message = str(info.value)
    assert f"{server.base_url}/chat/completions" in message and "HTTP 500" in message and "3 attempts" in message
    failed = [json.dumps(r["body"], sort_keys=True) for r in server.requests[breaker.requests :]]
    # The first request to fail: its first attempt and 2 retries (a queued request may have started
    # before the batch was cancelled; it gets no retries once the failure is known).
    assert collections.Counter(failed).most_common(1)[0][1] == 3, "first attempt + 2 retries, then stop"
    last = _last(tmp_path)
    assert _digest(last) == breaker.digest, "the failure must not touch the last checkpoint"
    assert torch.load(last, weights_only=True)["waltzlit"]["rl_step"] == 1


def test_nan_reward_skips_the_update_and_is_counted(monkeypatch, tmp_path, waltz_cache):
    import waltzlit.training.module as module_py

    real = module_py.score_episode

    def nan_feedback_reward(episode, cfg, label_weight):
        scores = real(episode, cfg, label_weight)
        poisoned = [dataclasses.replace(b, total=float("nan")) for b in scores.feedbacks]
        return dataclasses.replace(scores, feedbacks=poisoned)

    monkeypatch.setattr(module_py, "score_episode", nan_feedback_reward)
    snapshot = Snapshot()
    cli = _fit(tmp_path, "--model.schedule.total_rl_steps=1", "--model.schedule.stage1_steps=1", callbacks=[snapshot])
    for name, before in snapshot.before.items():
        assert torch.equal(before, dict(cli.model.named_parameters())[name]), f"{name} changed"
    scalars = _scalars(tmp_path)
    assert scalars[("train/feedback/update/skipped_nonfinite", 0)] == 1.0
    assert not cli.trainer.optimizers[1].state, "the feedback optimizer must not have stepped"


def test_sigkill_at_an_arbitrary_point_then_resume_matches(uninterrupted, tmp_path):
    """One CLI process, killed with SIGKILL as soon as a checkpoint of RL step >= 2 exists (so at
    whatever it was doing then: rolling out, validating or saving), resumed in this process."""
    root = tmp_path / "a"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "stderr.txt", "wb")  # a file, not a pipe: a full pipe would block the child
    process = subprocess.Popen([sys.executable, "-m", "waltzlit", "fit", *_args(root)], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline, step = time.monotonic() + 300, 0
    try:
        while step < 2:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint of RL step 2 within 300 s"
            found = glob.glob(f"{root}/runs/**/checkpoints/last.ckpt", recursive=True)
            if found:  # replaced atomically: always a whole file
                step = torch.load(found[0], weights_only=True)["waltzlit"]["rl_step"]
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    last = _last(root)
    resumed = _fit(tmp_path / "b", ckpt_path=last)
    reference_cli, reference_root = uninterrupted
    _assert_resumed_exactly(reference_cli, reference_root, resumed, root, tmp_path / "b")
