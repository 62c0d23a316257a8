"""``python -m waltzlit evaluate --config conf/eval/tiny.yaml [--key=value ...]``

The paper's Table 1 in one command: every mode in ``modes`` over every set in ``eval_sets``. The
YAML's top-level keys are the fields of :class:`~waltzlit.evaluation.config.EvalConfig` plus
``judge`` and ``guard`` (class_path objects, like the training config's judge) and ``device``.
jsonargparse checks every key and value before any model loads; ``--print_config`` shows the
resolved configuration.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields

from waltzlit.evaluation.config import EvalConfig
from waltzlit.judges.base import Judge


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    from waltzlit.cli_errors import exit_with

    # --help shows each option's description from the config dataclasses' attribute docstrings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)

    class ConciseParser(ArgumentParser):
        """Configuration errors in one line (waltzlit.cli_errors), as for ``fit``."""

        def error(self, message: str, ex: Exception | None = None):
            if not self.exit_on_error:
                return super().error(message, ex)
            exit_with(message, "python -m waltzlit evaluate", [s for a in self._actions for s in a.option_strings])

    parser = ConciseParser(
        prog="python -m waltzlit evaluate",
        description="Evaluate the two-agent system and its baselines (paper Table 1).",
        env_prefix="WALTZLIT_EVAL",
        allow_abbrev=False,  # a misspelt key is an error, not a prefix of the right one
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with the options below.")
    parser.add_class_arguments(EvalConfig, instantiate=False)
    parser.add_argument("--judge", type=Judge | None, default=None,
                        help="Scores final responses (class_path); default the rule judge (paper: WildGuard).")
    parser.add_argument("--guard", type=Judge | None, default=None,
                        help="The safeguard's classifier (class_path); default the judge (paper: Llama Guard 4).")
    parser.add_argument("--device", type=str, default="auto", help="Where the agents run: auto, cpu, cuda, cuda:1.")
    return parser


def parse(args: list[str] | None = None) -> tuple[EvalConfig, Judge | None, Judge | None, str]:
    """(config, judge, guard, device) from the command line; errors name the bad key."""
    parser = build_parser()
    namespace = parser.instantiate(parser.parse_args(args))
    values = {f.name: namespace[f.name] for f in fields(EvalConfig)}
    try:
        cfg = EvalConfig(**values)
    except ValueError as err:
        parser.error(str(err))
    return cfg, namespace.judge, namespace.guard, namespace.device


def main(args: list[str] | None = None) -> int:
    from waltzlit.cli_errors import quiet_library_bars
    from waltzlit.evaluation.runner import evaluate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_library_bars()
    cfg, judge, guard, device = parse(args)
    result = evaluate(cfg, judge=judge, guard=guard, device=device)
    sys.stdout.write("\n" + result.table + "\n")
    for kind, path in result.files.items():
        sys.stdout.write(f"{kind}: {path}\n")
    return 0
