"""Command line: ``python -m waltzlit fit|validate --config conf/X.yaml [--config more.yaml ...]``.

LightningCLI builds the schema from ``WaltzModule`` and ``PromptDataModule`` signatures, so every
YAML key is checked (an unknown key or a bad value is reported with its name) and ``--print_config``
shows the complete resolved configuration.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from waltzlit.data.datamodule import PromptDataModule
from waltzlit.training.export import AgentExport
from waltzlit.training.fault_tolerance import WaltzCheckpoint
from waltzlit.training.module import WaltzModule

TRAINER_DEFAULTS = {
    # The run ends when the module reaches schedule.total_rl_steps; an epoch never ends by itself.
    "max_epochs": -1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "waltz"},
    },
}


class WaltzCLI(LightningCLI):
    """LightningCLI with two always-on callbacks, each configurable under its own section:
    ``checkpoint:`` (a ModelCheckpoint that writes ``last.ckpt`` atomically after every
    ``every_n_rl_steps`` RL steps and on SIGTERM, for resuming) and ``export:`` (the agents in
    Hugging Face format when training ends)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(WaltzCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(AgentExport, "export")


# The agents sit in eval mode between updates on purpose (sampling and reference log-probs must
# not see dropout); the update switches the trained policy to train mode itself.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates."""
    return WaltzCLI(
        WaltzModule,
        PromptDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        run=run,
    )
