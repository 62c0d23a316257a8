"""Short configuration errors for the command line (and its other output: no library progress
bars in a log file).

jsonargparse reports a bad key inside a dataclass section as a ~100-line usage block followed by a
nested union-type report (``NestedArg(key='kl_coeff', val='0.1')``). :func:`concise_error` reduces
that report to the one line a user needs: the dotted key, what is wrong, the allowed keys or
values, and the closest valid key ("did you mean kl_coef?").
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import sys

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted|Key '([^']+)' is not expected")
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_EXPECTED = re.compile(r"Expected an? (.+?)\. Got value: (.*)")
_OWN_CHECK = re.compile(r"^\s*- (\S+: .+)$", re.M)
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def _fields(class_path: str) -> list[str]:
    """Field names of the dataclass at ``class_path`` (empty when it is not one)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _describe_type(text: str) -> str:
    literal = re.fullmatch(r"typing\.Literal\[(.+)\]", text)
    if literal:
        return "one of " + literal.group(1)
    simple = re.fullmatch(r"<class '(\w+)'>", text)
    return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}.get(
        simple.group(1), simple.group(1)) if simple else text


def concise_error(message: str, options: list[str] | None = None) -> str:
    """One short line for a jsonargparse error ``message`` (the message itself when no pattern fits);
    ``options`` (the parser's option strings) give a close match for an unrecognized option."""
    keys = _PARSER_KEY.findall(message)
    unknown = _UNKNOWN_OPTION.search(message)
    class_path = _CLASS_PATH.search(message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        section = keys[0] if keys else ""
        allowed = _fields(class_path.group(1)) if class_path else []
        where = f"{section}." if section else ""
        text = f"{where}{name}: unknown key"
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            text += f"; did you mean {where}{close[0]}?"
        if allowed:
            text += f" (keys of {section or 'this section'}: {', '.join(allowed)})"
        return text
    expected = _EXPECTED.search(message)
    if expected and keys:
        return f"{'.'.join(keys)}: expected {_describe_type(expected.group(1))}, got {expected.group(2).strip()!r}"
    own = _OWN_CHECK.search(message)
    if own and "Expected a <class 'NoneType'>" in message:
        # the dataclass's own check (__post_init__) names the key within its section and the
        # allowed values; the parser key says which section (model.conversation, ...)
        text = own.group(1).strip()
        if keys:
            section, last = keys[0], keys[0].split(".")[-1]
            text = section[: -len(last)] + text if text.startswith(last + ".") else f"{section}.{text}"
        return text
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        given = unrecognized.group(1)
        close = difflib.get_close_matches(given.split("=", 1)[0], options or [], n=1)
        return f"unknown option {given}" + (f"; did you mean {close[0]}?" if close else "")
    return message


_OWN_CHECK_MESSAGE = re.compile(r"^(\w+): (.*?)(?:, got (.+))?$", re.DOTALL)


def dotted_key(message: str, values: dict[str, object]) -> str:
    """``message`` of a config's own check (``"kl_coef: must be >= 0, got -1.0"``) with its key
    written as the full option (``model.algorithm.kl_coef``), found in ``values`` (dotted key ->
    value, the parsed configuration): the one key with that last part, or, when several share it
    (``temperature`` of each agent), the one holding the value the message reports. Unchanged when
    no single key fits."""
    match = _OWN_CHECK_MESSAGE.match(message)
    if not match:
        return message
    leaf, rest, got = match.groups()
    candidates = [key for key in values if key == leaf or key.endswith("." + leaf)]
    if len(candidates) > 1 and got is not None:
        candidates = [key for key in candidates if str(values[key]) == got.strip()]
    if len(candidates) != 1:
        return message
    return f"{candidates[0]}: {rest}" + (f", got {got}" if got is not None else "")


def exit_with(message: str, prog: str | None = None, options: list[str] | None = None,
              values: dict[str, object] | None = None) -> None:
    """Print the short form of ``message`` and a pointer to --help (of ``prog``; by default the
    subcommand being run, fit or validate); exit with status 2. With the parsed ``values`` (dotted
    key -> value), a config check's key is written as the full option."""
    if prog is None:
        command = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in ("fit", "validate") else "fit"
        prog = f"python -m waltzlit {command}"
    short = concise_error(message, options)
    if values:
        short = dotted_key(short, values)
    sys.stderr.write(f"error: {short}\n(every option and what it means: {prog} --help)\n")
    raise SystemExit(2)


def quiet_library_bars() -> None:
    """When stderr is not a terminal, transformers' and datasets' own bars (loading and writing
    weights, reading a CSV) are off: in a log file they are lines of carriage returns."""
    if sys.stderr.isatty():
        return
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bar()
