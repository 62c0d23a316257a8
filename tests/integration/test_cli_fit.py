"""End to end through the real CLI on tiny models: metrics, frozen/trained weights, resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.integration.cli_helpers import FAST, Snapshot, changed_parameters, scalar_tags
from waltzlit.cli import main

pytestmark = pytest.mark.integration


def _fit(tmp_path, *extra: str, ckpt_path: str | None = None):
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *extra]
    cli = main(args=args, run=False)
    snapshot = Snapshot()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli, snapshot


def test_stage1_then_resume_into_stage2(tmp_path, waltz_cache):
    # Run 1: stage 1 only (2 RL steps) -> only the feedback agent learns.
    cli, snap = _fit(tmp_path / "a", "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=2")
    module = cli.model
    assert module.rl_step == 2
    changed, total = changed_parameters(snap, module, "policies.feedback.")
    assert changed == total > 0, f"only {changed}/{total} feedback parameters changed"
    assert changed_parameters(snap, module, "policies.conversation.")[0] == 0, "stage 1 must freeze the conversation agent"
    assert changed_parameters(snap, module, "references.")[0] == 0, "reference policies must stay frozen"

    tags = scalar_tags(tmp_path / "a" / "runs")
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
    changed, total = changed_parameters(snap2, module2, "policies.conversation.")
    assert changed == total > 0, "stage 2 must train the conversation agent"
    assert changed_parameters(snap2, module2, "references.")[0] == 0
    tags = scalar_tags(tmp_path / "b" / "runs")
    assert "train/conversation/update/loss" in tags
    # Both agents were exported in Hugging Face format.
    exported = list((tmp_path / "b" / "runs").glob("**/agents/*/config.json"))
    assert len(exported) == 2


def test_frozen_conversation_ablation_trains_only_the_feedback_agent_in_stage2(tmp_path, waltz_cache):
    # Table 5's co-evolution ablation: 1 stage-1 step + 1 stage-2 step, conversation agent frozen.
    cli, snap = _fit(tmp_path, "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=1",
                     "--model.schedule.freeze_conversation=true")
    assert cli.model.rl_step == 2 and cli.model.stage == 2
    changed, total = changed_parameters(snap, cli.model, "policies.feedback.")
    assert changed == total > 0
    assert changed_parameters(snap, cli.model, "policies.conversation.")[0] == 0
    assert "train/conversation/update/loss" not in scalar_tags(tmp_path / "runs")


def test_resuming_from_the_command_line_keeps_the_given_model_settings(tmp_path, waltz_cache, caplog, capsys):
    # Lightning's CLI would replace the model section by the checkpoint's hyperparameters; a stage-1
    # checkpoint continued with another reward or a longer schedule must run what was asked for.
    common = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--model.schedule.stage1_steps=1"]
    main(args=["fit", *common, "--model.schedule.total_rl_steps=1"])
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    with caplog.at_level("WARNING", logger="waltzlit.cli"):
        cli = main(args=["fit", *common, "--model.schedule.total_rl_steps=2", "--model.reward.gate_losses=false",
                         f"--ckpt_path={last}"])
    assert cli.model.reward_cfg.gate_losses is False
    assert cli.model.schedule.total_rl_steps == 2 and cli.model.rl_step == 2
    assert "model.reward.gate_losses: True -> False" in caplog.text
    assert "model.schedule.total_rl_steps: 1 -> 2" in caplog.text
    # the end-of-run summary names the step, the checkpoint, the exported agents and TensorBoard
    summary = capsys.readouterr().err
    assert "waltzlit: finished at RL step 2 of 2 (stage 2)" in summary
    assert f"checkpoint: {last}" in summary and "feedback agent: " in summary and "tensorboard --logdir" in summary


def test_lora_agents_sampling_from_merged_copies(tmp_path, waltz_cache):
    # Both agents LoRA, sampling from merged copies (the feedback agent's in bf16): the copies are
    # rewritten after each step, the step's token counts and the bf16 copy's log-prob gap are logged.
    lora = '{"r": 4, "alpha": 8}'
    cli, snap = _fit(tmp_path, "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=1",
                     f"--model.conversation.lora={lora}", f"--model.feedback.lora={lora}",
                     "--model.conversation.merged_lora_sampler=true", "--model.feedback.merged_lora_sampler=true",
                     "--model.feedback.sampler_dtype=bfloat16")
    module = cli.model
    for role in ("conversation", "feedback"):
        changed, total = changed_parameters(snap, module, f"policies.{role}.")
        assert 0 < changed < total  # the adapter moved, the base did not
        agent = module.agents[role]
        ids = torch.randint(3, 200, (2, 12))
        with torch.no_grad():
            policy = torch.softmax(agent.model(input_ids=ids).logits.float(), -1)
            copy = torch.softmax(agent.sampler.current()(input_ids=ids).logits.float(), -1)
        tolerance = 2e-2 if role == "feedback" else 1e-5  # bf16 copy: close; fp32 copy: equal to rounding
        assert (copy - policy).abs().max() < tolerance
    tags = scalar_tags(tmp_path / "runs")
    for tag in ["tokens/rollout/c0/prompt", "tokens/rollout/feedback/generated", "tokens/update/feedback/padded",
                "train/feedback/update/logprob_mismatch"]:
        assert tag in tags, f"{tag} missing; have {sorted(tags)}"


def test_resuming_a_finished_run_trains_nothing(tmp_path, waltz_cache, capsys):
    common = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--model.schedule.stage1_steps=1", "--model.schedule.total_rl_steps=2"]
    main(args=["fit", *common])
    run = tmp_path / "runs" / "tiny" / "version_0"
    last, exported = run / "checkpoints" / "last.ckpt", run / "agents" / "feedback" / "config.json"
    stamps = (last.stat().st_mtime_ns, exported.stat().st_mtime_ns)
    cli = main(args=["fit", *common, f"--ckpt_path={last}"])
    assert cli.model.rl_step == 2  # no third RL step
    assert (last.stat().st_mtime_ns, exported.stat().st_mtime_ns) == stamps  # no new save, no new export
    assert "nothing to train" in capsys.readouterr().err


def test_resume_continues_in_the_run_folder_and_clears_dead_saves(tmp_path, waltz_cache, recwarn):
    common = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--model.schedule.stage1_steps=1"]
    main(args=["fit", *common, "--model.schedule.total_rl_steps=1"])
    run = tmp_path / "runs" / "tiny" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    dead = run / "checkpoints" / ".last.ckpt.999999.tmp"  # a save killed mid-write by a process now gone
    dead.write_bytes(b"partial")
    recwarn.clear()
    cli = main(args=["fit", *common, "--model.schedule.total_rl_steps=2", f"--ckpt_path={last}"])
    assert cli.model.rl_step == 2  # continued to the raised total
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["version_0"]  # no version_1
    assert not dead.exists()
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # both invocations log into version_0
    # the folder holds the resumed checkpoint by design: no "directory exists and is not empty"
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    # a new folder only on request: a version given on the command line is where the resume writes
    main(args=["fit", *common, "--model.schedule.total_rl_steps=3", f"--ckpt_path={last}",
               "--trainer.logger.init_args.version=resumed"])
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["resumed", "version_0"]
    resumed = tmp_path / "runs" / "tiny" / "resumed"
    assert list(resumed.glob("events.out.tfevents.*")) and (resumed / "checkpoints" / "last.ckpt").is_file()


def test_validating_a_checkpoint_does_not_speak_of_resuming(tmp_path, waltz_cache, caplog, recwarn, capsys):
    common = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
              "--model.schedule.stage1_steps=1"]
    main(args=["fit", *common, "--model.schedule.total_rl_steps=1"])
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    caplog.clear()
    recwarn.clear()
    with caplog.at_level("INFO", logger="waltzlit"):
        main(args=["validate", *common, "--model.schedule.total_rl_steps=2", f"--ckpt_path={last}"])
    assert "validating" in caplog.text and "model.schedule.total_rl_steps: 1 -> 2" in caplog.text
    assert "checkpoint loaded at RL step 1" in caplog.text
    assert "resum" not in caplog.text.lower()
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    # the rates are said on the terminal too (they go to TensorBoard, so Lightning prints no table)
    summary = capsys.readouterr().err
    assert "waltzlit: validated at RL step 1 of 2 (stage 2)" in summary
    assert "validation (first answer -> final): unsafe " in summary and "tensorboard --logdir" in summary


def test_a_full_ft_step_at_the_paper_lr_moves_the_weights_with_fp32_masters(tmp_path, waltz_cache, caplog):
    # One stage-1 RL step of the tiny recipe (full fine-tuning) at lr 5e-7 with bf16-mixed: every
    # feedback weight that got a gradient changes (embedding rows of tokens absent from the batch
    # get none, so they are left out of the count).
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--model.schedule.total_rl_steps=1", "--model.schedule.stage1_steps=1", "--trainer.precision=bf16-mixed",
            "--model.feedback.lr=5e-7", "--model.conversation.lr=5e-7"]
    cli = main(args=args, run=False)
    cli.model.configure_model()
    model = cli.model.agents["feedback"].model
    before = {k: v.detach().clone() for k, v in model.named_parameters() if "embed" not in k}
    with caplog.at_level("WARNING", logger="waltzlit.training.module"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "barely trains" not in caplog.text
    after = dict(model.named_parameters())
    changed = sum(int((after[k].detach() != v).sum()) for k, v in before.items())
    assert changed / sum(v.numel() for v in before.values()) > 0.99


def test_bf16_true_runs_a_step(tmp_path, waltz_cache):
    # Lightning's half-precision plugin casts every batch with apply_to_collection, which rebuilt
    # the frozen PromptRecord dataclasses and crashed at the first batch; the batch is opaque now.
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), *FAST, "--trainer.val_check_interval=1000",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--model.schedule.total_rl_steps=1", "--model.schedule.stage1_steps=1", "--trainer.precision=bf16-true"]
    cli = main(args=["fit", *args])
    assert cli.model.rl_step == 1


def test_bf16_weights_at_the_paper_lr_are_warned_about_at_start(tmp_path, caplog):
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), "--trainer.logger=false", "--trainer.precision=bf16-true",
            "--model.feedback.lr=5e-7"]
    cli = main(args=args, run=False)
    cli.model.trainer = cli.trainer
    with caplog.at_level("WARNING", logger="waltzlit.training.module"):
        cli.model.setup("fit")
    assert "model.feedback.lr: 5e-07 with the weights stored in bfloat16 (trainer.precision: bf16-true)" in caplog.text
    assert "model.conversation.lr" not in caplog.text  # its lr (the recipe's) is large enough
