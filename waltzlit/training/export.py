"""Export of trained agents in Hugging Face format (LoRA adapters, or full weights)."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


def gather_full_state_dicts(module: LightningModule) -> dict[str, dict] | None:
    """Full (unsharded, CPU) state dicts of each agent's model when FSDP2 sharded it, else None.

    A collective: every rank must call it; only then may rank 0 write the files.
    """
    if getattr(module, "_device_mesh", None) is None:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered: dict[int, dict] = {}
    for agent in module.agents.values():
        if id(agent.model) not in gathered:  # a shared base is gathered once
            gathered[id(agent.model)] = get_model_state_dict(agent.model, options=options)
    return {role: gathered[id(agent.model)] for role, agent in module.agents.items()}


def export_agents(
    module: LightningModule,
    directory: str | Path,
    merge_lora: bool = False,
    state_dicts: dict[str, dict] | None = None,
) -> dict[str, Path]:
    """Save each agent (model + tokenizer) under ``directory/<role>``; returns the folders.

    A LoRA agent saves its adapter (loadable with ``peft.PeftModel.from_pretrained`` on its base),
    or, with ``merge_lora``, the base with the adapter merged in (loadable by transformers alone).
    Agents on a shared base (``adapter_name`` set) export only their own adapter, or the base with
    only their own adapter merged, so each folder stands alone like a separate agent's.
    ``state_dicts`` (from :func:`gather_full_state_dicts`) replaces the weights of sharded models.
    """
    import copy

    folders = {}
    for role, agent in module.agents.items():
        folder = Path(directory) / role
        model = agent.model
        adapter = getattr(agent, "adapter_name", None)
        gathered = {"state_dict": state_dicts[role]} if state_dicts else {}
        if merge_lora and agent.uses_lora and gathered:
            raise ValueError("export.merge_lora: not available for sharded models; export adapters and merge offline")
        if merge_lora and agent.uses_lora:
            model = copy.deepcopy(model).merge_and_unload(adapter_names=[adapter] if adapter else None)
            model.save_pretrained(folder)
        elif adapter is not None:
            _save_one_adapter(model, adapter, folder, **gathered)
        else:
            model.save_pretrained(folder, **gathered)
        agent.tokenizer.save_pretrained(folder)
        (folder / "system_prompt.txt").write_text(agent.system_prompt)
        folders[role] = folder
    return folders


def _save_one_adapter(model, adapter: str, folder: Path, **save_kwargs) -> None:
    """Save adapter ``adapter`` of a multi-adapter peft model at the top of ``folder``.

    peft writes a non-"default" adapter into ``folder/<adapter>/``; it is moved up so that
    ``PeftModel.from_pretrained(base, folder)`` finds it like any single-adapter export.
    """
    import shutil
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        model.save_pretrained(scratch, selected_adapters=[adapter], **save_kwargs)
        source = Path(scratch) / adapter if (Path(scratch) / adapter).is_dir() else Path(scratch)
        for item in source.iterdir():
            if item.is_file():
                shutil.move(str(item), folder / item.name)


class AgentExport(Callback):
    """Exports both agents when training ends, to ``<log_dir>/agents`` unless ``directory`` is set."""

    def __init__(self, directory: str | None = None, merge_lora: bool = False) -> None:
        self.directory = directory
        self.merge_lora = merge_lora
        self.exported: dict[str, str] = {}
        """role -> folder of the last export (for the end-of-run summary)."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(pl_module, "finished_before_start", False):
            return  # nothing was trained: the earlier export stands
        state_dicts = gather_full_state_dicts(pl_module)  # every rank takes part in the gather
        # trainer.log_dir broadcasts rank 0's folder: every rank asks, or rank 0 waits for the others
        directory = self.directory or str(Path(trainer.log_dir or trainer.default_root_dir) / "agents")
        if not trainer.is_global_zero:
            return
        for role, folder in export_agents(pl_module, directory, self.merge_lora, state_dicts).items():
            self.exported[role] = str(folder)
            log.info("exported the %s agent to %s", role, folder)
