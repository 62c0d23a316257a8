"""Exported agents reload with transformers / peft (and our loader) and give the same logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny_agents import TINY_AGENT, tiny_agent
from waltzlit.config import RolloutConfig
from waltzlit.deploy.load import AgentsSource, build_from_config, load_system
from waltzlit.training.export import export_agents

pytestmark = pytest.mark.integration

IDS = torch.tensor([[1, 3, 40, 41, 42, 43, 5, 60, 61]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def agent_logits(agent) -> torch.Tensor:
    agent.activate()  # on a shared base, switch to the agent's own adapter
    return logits(agent.model)


def write_fit_config(path, lora: bool, shared_base: bool = False) -> str:
    agent = {**TINY_AGENT, **({"lora": {"r": 4, "alpha": 8}} if lora else {})}
    model = {"conversation": {**agent, "seed": 0}, "feedback": {**agent, "seed": 0 if shared_base else 1},
             "judge": {"class_path": "waltzlit.judges.RuleJudge"}}
    if shared_base:
        model["memory_mode"] = "shared_base"
    path.write_text(yaml.safe_dump({"model": model, "trainer": {"max_epochs": 1}}))
    return str(path)


def perturb_lora(module) -> None:
    # LoRA B starts at zero, which would make adapter == base and the test vacuous.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.policies.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_full_weights_reload_with_transformers(tmp_path):
    agents = {"conversation": tiny_agent("conversation", 0), "feedback": tiny_agent("feedback", 1)}
    folders = export_agents(SimpleNamespace(agents=agents), tmp_path)
    for role, agent in agents.items():
        reloaded = AutoModelForCausalLM.from_pretrained(folders[role])
        assert torch.equal(logits(reloaded), logits(agent.model))
        tokenizer = AutoTokenizer.from_pretrained(folders[role])
        assert tokenizer("kill a process")["input_ids"] == agent.tokenizer("kill a process")["input_ids"]
        assert (folders[role] / "system_prompt.txt").read_text() == agent.system_prompt
    system = load_system(AgentsSource(exported=str(tmp_path)), RolloutConfig(), device="cpu")
    assert torch.equal(logits(system.conversation.model), logits(agents["conversation"].model))
    assert system.feedback.system_prompt == agents["feedback"].system_prompt
    assert system.conversation.tokenizer.padding_side == "left"


def test_lora_adapter_and_merged_exports(tmp_path):
    from peft import PeftModel

    config = write_fit_config(tmp_path / "fit.yaml", lora=True)
    module = build_from_config(config)
    perturb_lora(module)
    expected = {role: agent_logits(agent) for role, agent in module.agents.items()}

    adapters = export_agents(module, tmp_path / "adapters")
    assert (adapters["conversation"] / "adapter_config.json").is_file()
    bases = build_from_config(config, lora=False).agents  # the same seeded bases, without adapters
    for role, folder in adapters.items():
        reloaded = PeftModel.from_pretrained(bases[role].model, str(folder))
        torch.testing.assert_close(logits(reloaded), expected[role], rtol=0, atol=1e-6)
    # Our loader rebuilds the base from the fit config and merges the adapter.
    system = load_system(AgentsSource(exported=str(tmp_path / "adapters"), config=config), RolloutConfig(), "cpu")
    torch.testing.assert_close(logits(system.conversation.model), expected["conversation"], rtol=0, atol=1e-5)

    merged = export_agents(module, tmp_path / "merged", merge_lora=True)
    assert not (merged["feedback"] / "adapter_config.json").exists()
    for role, folder in merged.items():
        reloaded = AutoModelForCausalLM.from_pretrained(folder)  # transformers alone (so vLLM too)
        torch.testing.assert_close(logits(reloaded), expected[role], rtol=0, atol=1e-5)
    # Merging for export must leave the trained module's adapters in place.
    assert any("lora_" in n for n, _ in module.policies.named_parameters())


def test_checkpoint_with_run_config(tmp_path):
    config = write_fit_config(tmp_path / "config.yaml", lora=False)
    module = build_from_config(config)
    with torch.no_grad():
        for param in module.policies.parameters():
            param.mul_(1.5)  # "trained" weights that differ from a fresh build
    expected = logits(module.agents["feedback"].model)
    (tmp_path / "checkpoints").mkdir()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    # the WaltzModule checkpoint layout: the policies under "policies."
    state = {f"policies.{k}": v for k, v in module.policies.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"seed": 0}}, ckpt)
    # The prompt the run exported wins over a changed built-in default.
    (tmp_path / "agents" / "feedback").mkdir(parents=True)
    (tmp_path / "agents" / "feedback" / "system_prompt.txt").write_text("the prompt it was trained with")
    # config.yaml is found one folder above the checkpoint, as LightningCLI lays a run out.
    system = load_system(AgentsSource(checkpoint=str(ckpt)), RolloutConfig(), device="cpu")
    assert torch.equal(logits(system.feedback.model), expected)
    assert system.feedback.system_prompt == "the prompt it was trained with"
    assert system.conversation.system_prompt == module.agents["conversation"].system_prompt
    untrained = load_system(AgentsSource(config=config), RolloutConfig(), device="cpu")
    assert not torch.equal(logits(untrained.feedback.model), expected)


def test_shared_base_exports_one_adapter_per_agent(tmp_path):
    from peft import PeftModel

    config = write_fit_config(tmp_path / "fit.yaml", lora=True, shared_base=True)
    module = build_from_config(config)
    perturb_lora(module)
    expected = {role: agent_logits(agent) for role, agent in module.agents.items()}
    assert not torch.equal(expected["conversation"], expected["feedback"])

    adapters = export_agents(module, tmp_path / "adapters")
    merged = export_agents(module, tmp_path / "merged", merge_lora=True)
    bases = build_from_config(config, lora=False).agents
    for role, want in expected.items():
        assert (adapters[role] / "adapter_model.safetensors").is_file()
        reloaded = PeftModel.from_pretrained(bases[role].model, str(adapters[role]))
        torch.testing.assert_close(logits(reloaded), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(merged[role])), want, rtol=0, atol=1e-5)
    system = load_system(AgentsSource(exported=str(tmp_path / "adapters"), config=config), RolloutConfig(), "cpu")
    torch.testing.assert_close(logits(system.feedback.model), expected["feedback"], rtol=0, atol=1e-5)


def test_adapters_stored_without_tokenizer_use_their_recorded_base(tmp_path):
    # How benchmarks/learning commits trained adapters: adapter weights (float16) and config only;
    # the base model and its tokenizer come from the folder the adapter records.
    import json

    from safetensors.torch import load_file, save_file

    config = write_fit_config(tmp_path / "fit.yaml", lora=True, shared_base=True)
    module = build_from_config(config)
    perturb_lora(module)
    expected = {role: agent_logits(agent) for role, agent in module.agents.items()}
    base = build_from_config(config, lora=False).agents["conversation"]  # both agents share this seeded base
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    adapters = export_agents(module, tmp_path / "adapters")
    for folder in adapters.values():
        for file in folder.iterdir():
            if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                file.unlink()
        weights = load_file(str(folder / "adapter_model.safetensors"))
        save_file({k: v.half() for k, v in weights.items()}, str(folder / "adapter_model.safetensors"))
        settings = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": str(tmp_path / "base")}))
    system = load_system(AgentsSource(exported=str(tmp_path / "adapters")), RolloutConfig(), "cpu")
    for role in ("conversation", "feedback"):
        model = getattr(system, role).model
        # float16 adapter weights: equal up to half precision of the LoRA delta
        torch.testing.assert_close(logits(model), expected[role], rtol=0, atol=2e-3)
    assert system.conversation.tokenizer.chat_template == base.tokenizer.chat_template
