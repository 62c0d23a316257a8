"""Export of trained agents in Hugging Face format (LoRA adapters, or full weights)."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def export_agents(module: LightningModule, directory: str | Path, merge_lora: bool = False) -> dict[str, Path]:
    """Save each agent (model + tokenizer) under ``directory/<role>``; returns the folders.

    A LoRA agent saves its adapter (loadable with ``peft.PeftModel.from_pretrained`` on its base),
    or, with ``merge_lora``, the base with the adapter merged in (loadable by transformers alone).
    """
    folders = {}
    for role, agent in module.agents.items():
        folder = Path(directory) / role
        model = agent.model
        if merge_lora and agent.uses_lora:
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(folder)
        agent.tokenizer.save_pretrained(folder)
        (folder / "system_prompt.txt").write_text(agent.system_prompt)
        folders[role] = folder
    return folders


class AgentExport(Callback):
    """Exports both agents when training ends, to ``<log_dir>/agents`` unless ``directory`` is set."""

    def __init__(self, directory: str | None = None, merge_lora: bool = False) -> None:
        self.directory = directory
        self.merge_lora = merge_lora

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        directory = self.directory or str(Path(trainer.log_dir or trainer.default_root_dir) / "agents")
        for role, folder in export_agents(pl_module, directory, self.merge_lora).items():
            log.info("exported the %s agent to %s", role, folder)
