"""Every YAML under conf/ parses and instantiates (no download: models load in configure_model),
and bad configuration fails before anything is loaded, naming the key."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from waltzlit.cli import main
from waltzlit.training.module import WaltzModule

RECIPES = [pytest.param(p, id=p.name) for p in sorted((REPO_ROOT / "conf").glob("*.yaml"))]


def _cli(*args: str):
    return main(args=[*args, "--trainer.logger=false"], run=False)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_instantiates(recipe):
    cli = _cli("--config", str(recipe))
    assert isinstance(cli.model, WaltzModule)
    assert cli.model.policies is None  # nothing loaded yet


ABLATIONS = sorted((REPO_ROOT / "conf" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_composes_over_the_tiny_recipe(ablation):
    cli = _cli("--config", str(REPO_ROOT / "conf/tiny.yaml"), "--config", str(ablation))
    algo = cli.model.algorithm
    assert algo.advantage_estimator == ablation.stem
    assert algo.kl_coef == 0.01 and algo.micro_batch_size == 16  # the recipe's other keys survive
    assert ablation.read_text().startswith("#") and f"--config conf/ablations/{ablation.name}" in ablation.read_text()


def test_strategy_file_composes_over_a_recipe():
    cli = _cli("--config", str(REPO_ROOT / "conf/tiny.yaml"), "--config", str(REPO_ROOT / "conf/strategy/single.yaml"))
    assert cli.trainer.num_devices == 1


def test_paper_recipe_values():
    cli = _cli("--config", str(REPO_ROOT / "conf/waltz.yaml"))
    m = cli.model
    assert m.agent_configs["conversation"].model == m.agent_configs["feedback"].model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (m.reward_cfg.alpha, m.reward_cfg.label_weight_stage1, m.reward_cfg.label_weight_stage2, m.reward_cfg.gamma) == (
        0.65, 0.25, 0.0, 0.1)
    assert m.algorithm.kl_coef == 0.01 and m.algorithm.clip_eps == 0.2 and m.algorithm.advantage_estimator == "reinforce_plus_plus"
    assert m.agent_configs["conversation"].lr == 5e-7
    # the feedback agent's settings are interpolated from the conversation agent's (${...}, omegaconf mode)
    conversation, feedback = m.agent_configs["conversation"], m.agent_configs["feedback"]
    assert (feedback.lr, feedback.dtype, feedback.gradient_checkpointing) == (5e-7, "float32", True)
    # fp32 masters, bf16 compute: the start-up precision check has nothing to say
    from waltzlit.training.precision import precision_warnings

    assert str(cli.trainer.precision) == "bf16-mixed" and precision_warnings(m.agent_configs, "bf16-mixed") == []
    assert "${" in (REPO_ROOT / "conf/waltz.yaml").read_text() and feedback.model == conversation.model
    assert m.rollout_cfg.max_feedback_rounds == 1 and m.rollout_cfg.conversation.max_new_tokens == 512
    assert cli.datamodule.batch_size == 32
    assert type(m.judge).__name__ == "WildGuardJudge"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.algorithm.no_such_key=1", "no_such_key"),
        ("--model.algorithm.advantage_estimator=ppo_magic", "reinforce_plus_plus"),  # lists allowed values
        ("--model.algorithm.kl_estimator=k9", "k9"),
        ("--model.algorithm.advantage_estimator=grpo", "samples_per_prompt"),  # a group needs n >= 2
        ("--model.algorithm.agent_overrides={feedback: {clip_eps: 2}}", "agent_overrides.feedback.clip_eps"),
        ("--model.conversation.lr=-1", "lr"),
        ("--model.rollout.max_feedback_rounds=0", "max_feedback_rounds"),
        ("--model.rollout.feedback_template=no placeholder", "feedback_template"),
        ("--data.batch_size=0", "batch_size"),
        ("--model.schedule.total_rl_steps=0", "total_rl_steps"),
    ],
)
def test_bad_config_names_the_key(override, expected, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        _cli("--config", str(REPO_ROOT / "conf/tiny.yaml"), override)
    message = str(info.value) + capsys.readouterr().err
    assert expected in message, message


@pytest.mark.parametrize("override", sorted((REPO_ROOT / "conf/memory").glob("*.yaml")), ids=lambda p: p.name)
def test_memory_mode_composes_over_the_paper_recipe(override):
    cli = _cli("--config", str(REPO_ROOT / "conf/waltz.yaml"), "--config", str(override))
    assert cli.model.memory_mode == "shared_base"
    assert cli.model.agent_configs["feedback"].load_in_4bit
    assert cli.model.agent_configs["feedback"].model == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize(("override", "expected"), [
    ("--model.algorithm.kl_coeff=0.1", "model.algorithm.kl_coeff: unknown key; did you mean model.algorithm.kl_coef?"),
    ("--model.reward.alpha=high", "model.reward.alpha: expected a number, got 'high'"),
    ("--model.algorithm.kl_estimator=k5", "model.algorithm.kl_estimator: expected one of 'k1', 'k2', 'k3', got 'k5'"),
    ("--model.algorithm.advantage_estimator=reinforce", "unknown advantage estimator 'reinforce'; allowed values: dr_grpo"),
    ("--model.algorithm.advantage_estimator=grop", "reinforce_plus_plus_baseline, rloo; did you mean grpo?"),
])
def test_bad_keys_and_values_get_one_short_line(capsys, override, expected):
    with pytest.raises(SystemExit) as exit_info:
        _cli("--config", str(REPO_ROOT / "conf/tiny.yaml"), override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err and "usage:" not in err


def test_fit_help_describes_options(capsys):
    with pytest.raises(SystemExit):
        main(args=["--model.algorithm.help", "AlgorithmConfig"], run=False)
    out = capsys.readouterr().out
    assert "beta, the KL-to-reference coefficient" in out  # AlgorithmConfig.kl_coef's attribute docstring
    assert out.startswith("usage: python -m waltzlit") and "__main__" not in out


def test_only_fit_and_validate_are_offered(capsys):
    with pytest.raises(SystemExit):
        main(args=["--help"])
    out = capsys.readouterr().out
    assert "{fit,validate}" in out and "predict" not in out and "python -m waltzlit" in out


def test_a_misspelt_option_is_not_taken_as_a_prefix(capsys):
    # argparse would take --trainer.max_step as an abbreviation of --trainer.max_steps
    with pytest.raises(SystemExit):
        _cli("--config", str(REPO_ROOT / "conf/tiny.yaml"), "--trainer.max_step=3")
    assert "unknown option --trainer.max_step=3; did you mean --trainer.max_steps?" in capsys.readouterr().err


def test_evaluate_errors_are_short_too(capsys):
    from waltzlit.evaluation.cli import parse

    with pytest.raises(SystemExit):
        parse(["--config", str(REPO_ROOT / "conf/eval/tiny.yaml"), "--rollout.max_feedback_round=2"])
    err = capsys.readouterr().err
    assert "did you mean --rollout.max_feedback_rounds?" in err and len(err.strip().splitlines()) == 2


def test_config_differences_compare_values_not_containers():
    from waltzlit.cli import config_differences

    stored = {"conversation": {"betas": [0.9, 0.95], "lr": 1e-4}}
    assert config_differences(stored, {"conversation": {"betas": (0.9, 0.95), "lr": 1e-4}}) == []
    assert config_differences(stored, {"conversation": {"betas": (0.9, 0.99), "lr": 1e-4}}) == [
        ("conversation.betas", [0.9, 0.95], (0.9, 0.99))]


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "conf/eval").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_evaluation_config_parses(path, monkeypatch):
    # Parsed as `evaluate` parses them (no model loads); overlays are parsed on top of tiny.yaml.
    from waltzlit.evaluation.cli import parse

    monkeypatch.chdir(REPO_ROOT)
    configs = [path] if "base:" in path.read_text() or "trained:" in path.read_text() else [
        REPO_ROOT / "conf/eval/tiny.yaml", path]
    cfg, *_ = parse([a for c in configs for a in ("--config", str(c))])
    assert cfg.modes


def test_lightnings_product_tip_is_not_shown():
    # Lightning 2.6 logs "💡 Tip: ... try installing [litlogger]" on every run; its other lines stay
    import logging

    from waltzlit.cli import _quiet_lightning_tips

    _quiet_lightning_tips()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def record(text: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.INFO, __file__, 0, text, None, None)

    assert not logger.filter(record("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/)"))
    assert logger.filter(record("GPU available: False, used: False"))


def test_a_misspelt_config_file_gets_the_closest_one(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit):
        _cli("--config", "conf/tinyy.yaml")
    err = capsys.readouterr().err
    assert "conf/tinyy.yaml: no such configuration file; did you mean conf/tiny.yaml?" in err
    assert len(err.strip().splitlines()) == 2


def test_evaluate_help_describes_options(capsys):
    from jsonargparse import set_parsing_settings

    from waltzlit.evaluation.cli import parse

    set_parsing_settings(docstring_parse_attribute_docstrings=False)  # as in a process where fit never ran
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m waltzlit evaluate")
    assert "Bootstrap resamples for the 95 % intervals" in out  # EvalConfig.bootstrap_resamples' docstring
