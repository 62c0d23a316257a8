"""Command line: ``python -m waltzlit fit|validate --config conf/X.yaml [--config more.yaml ...]``.

LightningCLI builds the schema from ``WaltzModule`` and ``PromptDataModule`` signatures, so every
YAML key is checked (an unknown key or a bad value is reported with its name) and ``--print_config``
shows the complete resolved configuration.
"""

from __future__ import annotations

import difflib
import logging
import re
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from waltzlit.cli_errors import exit_with, quiet_library_bars
from waltzlit.data.datamodule import PromptDataModule
from waltzlit.training.export import AgentExport
from waltzlit.training.fault_tolerance import WaltzCheckpoint
from waltzlit.training.module import WaltzModule
from waltzlit.training.progress import RLProgressBar

log = logging.getLogger(__name__)

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


class ConciseArgumentParser(LightningArgumentParser):
    """Configuration errors as one line naming the key, the allowed keys or values and a close
    match (:mod:`waltzlit.cli_errors`), instead of the usage block and a nested type report."""

    def __init__(self, *args, **kwargs) -> None:
        # the parser of a nested --<section>.help is made without a prog: its usage would say __main__.py
        if not args and "prog" not in kwargs:
            command = next((a for a in sys.argv[1:2] if a in ("fit", "validate")), "")
            kwargs["prog"] = f"python -m waltzlit {command}".rstrip()
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        exit_with(message, options=[s for a in self._actions for s in a.option_strings])


class WaltzCLI(LightningCLI):
    """LightningCLI with two always-on callbacks, each configurable under its own section:
    ``checkpoint:`` (a ModelCheckpoint that writes ``last.ckpt`` atomically after every
    ``every_n_rl_steps`` RL steps and on SIGTERM, for resuming) and ``export:`` (the agents in
    Hugging Face format when training ends)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit and validate only: the module has no test_step or predict_step (evaluation is
        ``python -m waltzlit evaluate``)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def instantiate_classes(self) -> None:
        """A value that passes parsing but fails a config's own check (an unknown estimator name,
        say) is a configuration error too: one line, no traceback."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            if not self.parser.exit_on_error:
                raise
            config = self.config[self.subcommand] if self.subcommand else self.config
            # a jsonargparse Namespace iterates its top level only; keys() gives every dotted key
            exit_with(str(error), values={key: config[key] for key in config.keys()})  # noqa: SIM118

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        """Lightning's trainer, with the RL-step progress bar (:mod:`waltzlit.training.progress`)
        unless the progress bar is off or the configuration brings its own."""
        given = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, RLProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        """A short summary: where the run stopped, its last rates, and where everything was written."""
        if self.trainer.is_global_zero:
            sys.stderr.write(run_summary(self.trainer, self.model) + "\n")

    def after_validate(self) -> None:
        """validate's rates go to TensorBoard (not through ``self.log``, so Lightning prints no
        table): say them, and where they were written."""
        if self.trainer.is_global_zero:
            sys.stderr.write(validation_summary(self.trainer, self.model) + "\n")

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(WaltzCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(AgentExport, "export")

    def _parse_ckpt_path(self) -> None:
        """Keep the configuration as given when resuming with ``--ckpt_path``.

        LightningCLI would overwrite the ``model`` section with the hyperparameters stored in the
        checkpoint, silently: a stage-1 checkpoint continued with another stage-2 reward, or a run
        continued with a longer schedule, would run the checkpoint's settings instead. The
        checkpoint restores the *state* (weights, optimizers, RL step, RNG); the settings come
        from the command line and the YAML files. What differs from the checkpoint is logged.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        if subcommand == "fit":
            _continue_in_the_run_folder(self.config[subcommand], Path(ckpt_path))
        else:
            # Validating writes no checkpoint: ModelCheckpoint's note that its state is not
            # reloaded into another run folder only reads like a resume gone wrong.
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")
        try:
            stored = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters") or {}
            given = self.config[subcommand]["model"].as_dict()
        except Exception as error:  # the comparison is informative only; resuming goes on
            log.warning("could not compare the configuration with %s: %s", ckpt_path, error)
            return
        changed = config_differences(stored, given)
        if changed:
            verb = "resuming from" if subcommand == "fit" else "validating"
            log.warning("%s %s with these model settings changed (the given value is used): %s", verb,
                        ckpt_path, "; ".join(f"model.{key}: {old!r} -> {new!r}" for key, old, new in changed))


def run_summary(trainer: Trainer, module: WaltzModule) -> str:
    """The end-of-run summary ``fit`` prints: RL steps, last training (and validation) rates, the
    checkpoint, the exported agents, the TensorBoard folder and how to open it."""
    metrics = trainer.callback_metrics
    rates = [(name, key) for name, key in (("unsafe", "unsafe_rate_final"), ("over-refusal", "overrefusal_rate_final"))]
    lines = [f"waltzlit: finished at RL step {module.rl_step} of {module.schedule.total_rl_steps} (stage {module.stage})"
             + (": nothing to train, the checkpoint had finished" if getattr(module, "finished_before_start", False) else "")]
    for split in ("train", "val"):
        shown = [f"{name} {float(metrics[f'{split}/{key}']):.3f}" for name, key in rates if f"{split}/{key}" in metrics]
        if shown:
            lines.append(f"  last {'training step' if split == 'train' else 'validation'}: " + ", ".join(shown))
    checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    if checkpoint:
        lines.append(f"  checkpoint: {checkpoint}   (resume: --ckpt_path {checkpoint})")
    for callback in trainer.callbacks:
        for role, folder in getattr(callback, "exported", {}).items():
            lines.append(f"  {role} agent: {folder}")
    if trainer.logger is not None and getattr(trainer.logger, "log_dir", None):
        lines.append(f"  TensorBoard: {trainer.logger.log_dir}   (view: tensorboard --logdir {trainer.logger.log_dir})")
    return "\n".join(lines)


VALIDATION_RATES = (
    ("unsafe", "unsafe_rate"), ("over-refusal", "overrefusal_rate"), ("feedback trigger", "trigger_rate"),
    ("label accuracy", "label_accuracy"), ("JSON errors", "json_error_rate"),
)
"""What ``validate`` prints (``val/<key>``; unsafe and over-refusal as first answer -> final answer)."""


def validation_summary(trainer: Trainer, module: WaltzModule) -> str:
    """The summary ``validate`` prints: the RL step validated, the rates, the TensorBoard folder."""
    metrics = trainer.callback_metrics
    shown = []
    for name, key in VALIDATION_RATES:
        if f"val/{key}_initial" in metrics and f"val/{key}_final" in metrics:
            shown.append(f"{name} {float(metrics[f'val/{key}_initial']):.3f} -> {float(metrics[f'val/{key}_final']):.3f}")
        elif f"val/{key}" in metrics:
            shown.append(f"{name} {float(metrics[f'val/{key}']):.3f}")
    lines = [f"waltzlit: validated at RL step {module.rl_step} of {module.schedule.total_rl_steps} (stage {module.stage})"]
    if shown:
        lines.append("  validation (first answer -> final): " + ", ".join(shown))
    if trainer.logger is not None and getattr(trainer.logger, "log_dir", None):
        lines.append(f"  TensorBoard: {trainer.logger.log_dir}   (view: tensorboard --logdir {trainer.logger.log_dir})")
    return "\n".join(lines)


def _continue_in_the_run_folder(config, ckpt_path: Path) -> None:
    """Resume into the checkpoint's own run folder, so TensorBoard shows one continuous run.

    ``<save_dir>/<name>/version_N/checkpoints/last.ckpt`` sets the logger's ``version`` to N when
    the configuration leaves it unset and names the same ``save_dir``/``name`` (give a version to
    get a new folder). Temporaries of saves killed in that folder are removed now.
    """
    from waltzlit.training.fault_tolerance import _remove_stale_temporaries

    _remove_stale_temporaries(ckpt_path)
    run = ckpt_path.resolve().parent.parent
    logger = config.get("trainer", {}).get("logger") if hasattr(config.get("trainer", {}), "get") else None
    init_args = getattr(logger, "init_args", None)
    if init_args is None or not run.name.startswith("version_") or not run.name[len("version_"):].isdigit():
        return
    if getattr(init_args, "version", None) is not None or not hasattr(init_args, "save_dir"):
        return
    same = (Path(str(init_args.save_dir)).resolve() / str(getattr(init_args, "name", "") or "")) == run.parent
    if same:
        init_args.version = int(run.name[len("version_"):])
        log.info("resuming in %s (set trainer.logger.init_args.version for a new folder)", run)
        # The folder holds the checkpoint being resumed: Lightning's "not empty" warning is expected.
        checkpoints = re.escape(f"{run.parent.name}/{run.name}/checkpoints")
        warnings.filterwarnings("ignore", message=rf"Checkpoint directory .*{checkpoints} exists and is not empty")


def _comparable(value):
    """Lists and tuples compare by their items: a checkpoint stores [0.9, 0.95] for (0.9, 0.95)."""
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_differences(stored: dict, given: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, stored value, given value)`` for every key present in both with different values."""
    differences = []
    for key in sorted(set(stored) & set(given)):
        old, new = stored[key], given[key]
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif _comparable(old) != _comparable(new):
            differences.append((f"{prefix}{key}", old, new))
    return differences


# The agents sit in eval mode between updates on purpose (sampling and reference log-probs must
# not see dropout); the update switches the trained policy to train mode itself.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates, once per run; nothing for a user
# to do (lightning is pinned below 2.7, whose releases will drop the call).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
# Every sharded (FSDP2) save of last.ckpt replaces the previous one on purpose; torch's distributed
# checkpoint says so each time, with a note on a future default that Lightning, not a user, sets.
warnings.filterwarnings("ignore", message=r"Detected an existing checkpoint in .*, overwriting since self\.overwrite=True")


def _check_config_files(argv: list[str]) -> None:
    """Each ``--config``/``-c`` file must exist and be valid YAML; the error names the file and the
    line (jsonargparse reports a YAML syntax error as "<unicode string>")."""
    import yaml

    paths = [value for flag, value in zip(argv, argv[1:]) if flag in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        file = Path(path)
        if not file.is_file() and file.suffix in (".yaml", ".yml"):
            siblings = [str(p) for p in file.parent.glob("*.y*ml")] if file.parent.is_dir() else []
            close = difflib.get_close_matches(str(file), siblings, n=1)
            exit_with(f"{path}: no such configuration file" + (f"; did you mean {close[0]}?" if close else ""))
        if not file.is_file():
            continue  # jsonargparse also takes inline YAML here, and reports what is wrong with it itself
        try:
            yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            exit_with(f"{path}:{where}: not valid YAML: {problem}")


def _show_waltzlit_info() -> None:
    """waltzlit's INFO lines (data sizes, agent sizes, warm start, resume, export) on stderr, like
    Lightning's own, unless the application configured logging itself."""
    logger = logging.getLogger("waltzlit")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class _NoAdvertisement(logging.Filter):
    """Lightning 2.6 says "💡 Tip: ... try installing litlogger" on every run: about a product, not the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "try installing [litlogger]" not in record.getMessage()


def _quiet_lightning_tips() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisement) for f in logger.filters):
            logger.addFilter(_NoAdvertisement())


def main(args: list[str] | None = None, run: bool = True, cli_class: type[WaltzCLI] = WaltzCLI) -> LightningCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates
    (and ``waltzlit.plan`` passes a ``cli_class`` that instantiates nothing)."""
    from jsonargparse import set_parsing_settings

    _show_waltzlit_info()
    _quiet_lightning_tips()
    quiet_library_bars()
    _check_config_files(sys.argv[1:] if args is None else list(args))
    # --help shows each option's description from the config dataclasses' attribute docstrings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return cli_class(
        WaltzModule,
        PromptDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        # parser_mode omegaconf: recipes may use ${...} interpolation (conf/waltz.yaml does)
        # allow_abbrev False: a misspelt key is an error, not a prefix of the right one
        parser_kwargs={"prog": "python -m waltzlit", "parser_mode": "omegaconf", "allow_abbrev": False},
        parser_class=ConciseArgumentParser,
        run=run,
    )
