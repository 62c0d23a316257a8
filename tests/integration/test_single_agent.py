"""Single-agent mode (``model.feedback: null``) end to end through the CLI, as test_cli_fit does it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.integration.cli_helpers import Snapshot, changed_parameters, scalar_tags
from waltzlit.cli import main
from waltzlit.data.sources import PromptSourceConfig
from waltzlit.evaluation.config import AgentsSource, EvalConfig, ModeSpec
from waltzlit.evaluation.runner import evaluate

pytestmark = pytest.mark.integration

FAST = [
    "--model.conversation.warm_start.steps=60",
    "--model.rollout.conversation.max_new_tokens=24",
    "--model.schedule.total_rl_steps=2",
    "--model.schedule.log_transcripts_every=1",
    "--data.batch_size=3",
    "--data.val_holdout=6",
    "--data.val_batch_size=6",
    "--trainer.val_check_interval=2",
    "--trainer.enable_progress_bar=false",
]


def _cli(tmp_path, *extra: str):
    args = ["--config", str(REPO_ROOT / "conf/single_agent_tiny.yaml"), *FAST, f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *extra]
    return main(args=args, run=False)


def test_single_agent_trains_the_conversation_agent_alone(tmp_path, waltz_cache):
    cli = _cli(tmp_path)
    snapshot = Snapshot()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    module = cli.model
    assert module.rl_step == 2
    assert set(module.agents) == {"conversation"}, "the feedback agent must never be loaded"
    assert not any(n.startswith("policies.feedback.") for n in snapshot.before)
    changed, total = changed_parameters(snapshot, module, "policies.conversation.")
    assert changed == total > 0, f"only {changed}/{total} conversation parameters changed"
    assert changed_parameters(snapshot, module, "references.")[0] == 0, "the reference policy must stay frozen"
    assert cli.trainer.global_step == 2, "one optimizer step per RL step"

    tags = scalar_tags(tmp_path / "runs")
    for tag in ["train/conversation/update/loss", "train/conversation/reward_initial", "train/unsafe_rate_final",
                "val/unsafe_rate_final", "time/rollout/c0", "time/judge", "time/rewards", "time/step",
                "time/logprobs/conversation", "time/update/conversation"]:
        assert tag in tags, f"{tag} missing from TensorBoard; have {sorted(tags)}"
    assert not [t for t in tags if t.startswith("train/feedback") or t == "time/rollout/feedback"]
    exported = list((tmp_path / "runs").glob("**/agents/*/config.json"))
    assert [p.parent.name for p in exported] == ["conversation"]
    # The checkpoint holds the one agent and resumes like any other.
    last = next((tmp_path / "runs").glob("**/checkpoints/last.ckpt"))
    state = torch.load(last, weights_only=True)["state_dict"]
    assert state and all(k.split(".")[1] == "conversation" for k in state if k.startswith(("policies.", "references.")))

    # The conversation-only export is evaluated as the paper's rows 3 and 4 (single-model RL, + safeguard).
    agents = exported[0].parent.parent
    cfg = EvalConfig(
        eval_sets=[PromptSourceConfig(name="builtin", num_samples=4)],
        modes=[ModeSpec("alone", agents="single_rl", label="Single-model RL"),
               ModeSpec("safeguard", agents="single_rl", label="+ Safeguard")],
        single_rl=AgentsSource(exported=str(agents)), rollout=module.rollout_cfg,
        output_dir=str(tmp_path / "eval"), progress=False,
    )
    result = evaluate(cfg, device="cpu")
    assert [s.label for s in result.summaries] == ["Single-model RL", "+ Safeguard"]
    assert result.settings["agents"]["single_rl"]["feedback_model"] is None


def test_feedback_modes_refuse_single_rl_agents():
    with pytest.raises(ValueError, match="collaboration needs a feedback agent"):
        EvalConfig(modes=[ModeSpec("collaboration", agents="single_rl")], single_rl=AgentsSource(exported="x"))


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("--model.schedule.stage1_steps=3", ["model.schedule.stage1_steps", "must be 0", "model.feedback is null"]),
        ("--model.algorithm.feedback_samples_per_response=2", ["feedback_samples_per_response", "must be 1"]),
        ("--model.schedule.freeze_conversation=true", ["model.schedule.freeze_conversation", "must be false"]),
    ],
)
def test_single_agent_rejects_two_agent_settings(tmp_path, override, fragments, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        _cli(tmp_path, override, "--trainer.logger=false")
    message = str(info.value) + capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message[-2000:]}"
