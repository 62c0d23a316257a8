"""Every bad configuration fails before any model is loaded, with a message that names the key and
says what is allowed.

Most are refused while the CLI parses and instantiates (``run=False``: no trainer has run, no model
exists). Data-source contents (wrong columns) and run-length limits can only be checked against the
data or the trainer: they fail in ``trainer.fit`` at setup, which Lightning runs before
``configure_model``, and the test checks that no model was built.

Not in the list on purpose: ``schedule.stage1_steps >= total_rl_steps`` is valid (a stage-1-only
run, continued by another run with ``--ckpt_path``); ``trainer.max_steps`` below the optimizer steps
the schedule needs (the stage switch or the end would never be reached) is the invalid form of
"stage switch after max steps".
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO_ROOT
from waltzlit.cli import main

HTTP_JUDGE = "--model.judge.class_path=waltzlit.judges.OpenAIChatJudge"

# (arguments, fragments every message must contain: the key, then what is allowed)
PARSE_TIME = {
    "unknown key": (["--model.algorithm.no_such_key=1"], ["model.algorithm.no_such_key", "unknown key", "keys of model.algorithm", "--help"]),
    "unknown section": (["--model.no_such_section.x=1"], ["no_such_section", "--help"]),
    "wrong type float": (["--model.algorithm.kl_coef=abc"], ["model.algorithm.kl_coef", "expected a number", "'abc'"]),
    "wrong type int": (["--model.schedule.total_rl_steps=many"], ["model.schedule.total_rl_steps", "expected an integer"]),
    "alpha: high": (["--model.reward.alpha=high"], ["model.reward.alpha", "expected a number", "'high'"]),
    "negative beta": (["--model.algorithm.kl_coef=-0.1"], ["kl_coef", ">= 0"]),
    "negative lambda stage 1": (["--model.reward.label_weight_stage1=-0.25"], ["reward.label_weight_stage1", ">= 0"]),
    "negative lambda stage 2": (["--model.reward.label_weight_stage2=-1"], ["reward.label_weight_stage2", ">= 0"]),
    "negative gamma": (["--model.reward.gamma=-0.1"], ["reward.gamma", ">= 0"]),
    "negative alpha": (["--model.reward.alpha=-0.65"], ["reward.alpha", ">= 0"]),
    "infinite alpha": (["--model.reward.alpha=.inf"], ["reward.alpha", "finite"]),
    "T_max < 1": (["--model.rollout.max_feedback_rounds=0"], ["max_feedback_rounds", ">= 1"]),
    "unknown estimator": (
        ["--model.algorithm.advantage_estimator=ppo_magic"], ["advantage_estimator", "ppo_magic", "reinforce_plus_plus"]
    ),
    "unknown policy loss": (["--model.algorithm.policy_loss=magic_clip"], ["policy_loss", "magic_clip", "ppo_clip"]),
    "unknown KL estimator": (["--model.algorithm.kl_estimator=k9"], ["kl_estimator", "'k1', 'k2', 'k3'"]),
    "clip eps out of range": (["--model.algorithm.clip_eps=1.5"], ["clip_eps", "(0, 1)"]),
    "unknown judge": (
        ["--model.judge.class_path=waltzlit.judges.NoSuchJudge"], ["model.judge", "NoSuchJudge", "Judge"]
    ),
    "judge parse policy": (
        [HTTP_JUDGE, "--model.judge.init_args.on_parse_error=maybe"], ["on_parse_error", "maybe", "unsafe"]
    ),
    "judge url scheme": ([HTTP_JUDGE, "--model.judge.init_args.base_url=ftp://x"], ["base_url", "http://"]),
    "learning rate": (["--model.conversation.lr=0"], ["lr", "> 0"]),
    "dtype": (["--model.feedback.dtype=float8"], ["dtype", "float32", "bfloat16"]),
    "model and model_config": (["--model.conversation.model=org/some-model"], ["model_config", "set exactly one"]),
    "negative temperature": (["--model.rollout.conversation.temperature=-1"], ["temperature", ">= 0"]),
    "top_p zero": (["--model.rollout.feedback.top_p=0"], ["top_p", "(0, 1]"]),
    "max_new_tokens zero": (["--model.rollout.conversation.max_new_tokens=0"], ["max_new_tokens", "> 0"]),
    "sample B probability": (["--model.rollout.sample_b_probability=1.5"], ["sample_b_probability", "[0, 1]"]),
    "feedback template": (["--model.rollout.feedback_template=no placeholder"], ["feedback_template", "{feedback}"]),
    "feedback role": (["--model.rollout.feedback_role=assistant"], ["feedback_role", "'user', 'system'"]),
    "total steps < 1": (["--model.schedule.total_rl_steps=0"], ["total_rl_steps", ">= 1"]),
    "negative stage1 steps": (["--model.schedule.stage1_steps=-1"], ["stage1_steps", ">= 0"]),
    "LoRA rank": (["--model.conversation.lora.r=0"], ["lora.r", "> 0"]),
    "batch size": (["--data.batch_size=0"], ["data.batch_size", ">= 1"]),
    "negative holdout": (["--data.val_holdout=-1"], ["data.val_holdout", ">= 0"]),
    "unknown data source": (["--data.train_sources=[{name: nosuch}]"], ["nosuch", "allowed names", "builtin"]),
    "missing data file": (
        ["--data.train_sources=[{name: file, path: /nonexistent/prompts.csv, prompt_harmful: true}]"],
        ["data.train_sources[0].path", "/nonexistent/prompts.csv", "Allowed"],
    ),
    "unknown column field": (
        ["--data.train_sources=[{name: builtin}, {name: xstest, columns: {question: q}}]"],
        ["xstest.columns", "question", "fields are"],
    ),
    "checkpoint interval": (["--checkpoint.every_n_rl_steps=-2"], ["checkpoint.every_n_rl_steps", ">= 0"]),
}


def _message(info, capsys) -> str:
    return str(info.value) + capsys.readouterr().err


@pytest.mark.parametrize("args, fragments", list(PARSE_TIME.values()), ids=list(PARSE_TIME))
def test_bad_config_fails_at_parse_time_naming_key_and_allowed(args, fragments, capsys):
    with pytest.raises((SystemExit, ValueError, FileNotFoundError)) as info:
        main(args=["--config", str(REPO_ROOT / "conf/tiny.yaml"), *args, "--trainer.logger=false"], run=False)
    message = _message(info, capsys)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message[-2000:]}"


def _prompt_file(tmp_path, header: str) -> str:
    path = tmp_path / "prompts.csv"
    path.write_text(f"{header}\nHow do I bake bread?,0\nHow do I pick a lock?,1\n")
    return str(path)


FIT_TIME = {
    "wrong columns": (
        lambda tmp: [f"--data.train_sources=[{{name: file, path: {_prompt_file(tmp, 'text,label')}}}]"],
        ["lacks column(s) ['prompt']", "Found columns: ['text', 'label']", "Expected columns", "columns: {field"],
    ),
    "stage switch after max steps": (
        lambda tmp: ["--trainer.max_steps=10"], ["trainer.max_steps", "before the stage switch", "Allowed: -1"]
    ),
    "run ends before total steps": (lambda tmp: ["--trainer.max_steps=40"], ["trainer.max_steps", ">= 45"]),
    "holdout larger than the pool": (lambda tmp: ["--data.val_holdout=100000"], ["data.val_holdout", "not smaller"]),
}


@pytest.mark.parametrize("make_args, fragments", list(FIT_TIME.values()), ids=list(FIT_TIME))
def test_bad_config_fails_at_setup_before_any_model_is_built(make_args, fragments, tmp_path):
    cli = main(
        args=["--config", str(REPO_ROOT / "conf/tiny.yaml"), *make_args(tmp_path), "--trainer.logger=false",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        run=False,
    )
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    assert cli.model.policies is None and not cli.model.agents, "a model was loaded before the error"


def test_at_least_twenty_bad_configurations_are_covered():
    assert len(PARSE_TIME) + len(FIT_TIME) >= 20


@pytest.mark.parametrize(("override", "fragment"), [
    ("--model.conversation.model=/nonexistent/model", "model: no such local folder: /nonexistent/model"),
    ("--model.conversation.model_config={model_type: llama, hidden_size: -64}",
     "model_config.hidden_size: must be a positive integer, got -64"),
    ("--model.conversation.model_config={model_type: lama}", "model_config.model_type: unknown 'lama'; close: llama"),
])
def test_models_that_cannot_load_fail_before_loading(capsys, override, fragment):
    args = ["--config", str(REPO_ROOT / "conf/tiny.yaml"), override, "--trainer.logger=false"]
    if "model=" in override:
        args.append("--model.conversation.model_config=null")
    with pytest.raises(SystemExit):
        main(args=args, run=False)
    assert fragment in capsys.readouterr().err


def test_bad_files_are_named_with_what_is_wrong(tmp_path, capsys):
    from waltzlit.data.sources import PromptSourceConfig, load_prompt_source

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  conversation: [\n")
    with pytest.raises(SystemExit):
        main(args=["--config", str(bad)], run=False)
    assert f"{bad}: line 3, column 1: not valid YAML" in capsys.readouterr().err
    (tmp_path / "header.csv").write_text("prompt,label\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "label": 1}\n{broken\n')
    for name, fragment in (("header.csv", "has no rows (a header only?)"), ("empty.csv", "is empty"),
                           ("broken.jsonl", "line 2 is not valid JSON")):
        with pytest.raises(ValueError) as info:
            load_prompt_source(PromptSourceConfig(name="file", path=str(tmp_path / name)))
        assert f"{tmp_path / name} {fragment}" in str(info.value)  # the file, then what is wrong with it


def test_null_judge_and_sources_say_the_default_they_take(caplog):
    # An explicit null is not an error: the run takes the default and says which, at start.
    with caplog.at_level("INFO", logger="waltzlit"):
        main(args=["--config", str(REPO_ROOT / "conf/tiny.yaml"), "--model.judge=null", "--data.train_sources=null",
                   "--trainer.logger=false"], run=False)
    assert "model.judge not set: using the rule judge" in caplog.text
    assert "data.train_sources not set: training on the built-in prompt set" in caplog.text


@pytest.mark.parametrize(("override", "line"), [
    ("--model.algorithm.kl_coef=-1", "error: model.algorithm.kl_coef: must be >= 0, got -1.0"),
    # two keys end in "temperature": the one holding the reported value is named
    ("--model.rollout.feedback.temperature=-2", "error: model.rollout.feedback.temperature: must be >= 0, got -2.0"),
])
def test_a_config_check_names_the_full_option(capsys, override, line):
    with pytest.raises(SystemExit):
        main(args=["--config", str(REPO_ROOT / "conf/tiny.yaml"), override, "--trainer.logger=false"], run=False)
    assert capsys.readouterr().err.splitlines()[-2] == line


def test_dotted_key_leaves_what_it_cannot_place():
    from waltzlit.cli_errors import dotted_key

    values = {"a.temperature": 0.7, "b.temperature": 0.7, "c.kl_coef": -1.0}
    assert dotted_key("kl_coef: must be >= 0, got -1.0", values) == "c.kl_coef: must be >= 0, got -1.0"
    # two keys hold the reported value: which one failed is unknown, so the message stays as it was
    assert dotted_key("temperature: must be >= 0, got 0.7", values) == "temperature: must be >= 0, got 0.7"
    assert dotted_key("no key here", values) == "no key here"


def test_the_help_pointer_names_the_subcommand_being_run(monkeypatch, capsys):
    from waltzlit.cli_errors import exit_with

    for command in ("validate", "fit"):
        monkeypatch.setattr(sys, "argv", ["waltzlit", command, "--config", "conf/tiny.yaml"])
        with pytest.raises(SystemExit):
            exit_with("kl_coef: must be >= 0, got -1.0")
        assert capsys.readouterr().err.endswith(f"python -m waltzlit {command} --help)\n")
