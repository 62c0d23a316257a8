"""Per-source schemas: which columns each safety dataset has and how a row becomes prompts.

Each :class:`SourceSchema` names the dataset's documented hub id, its columns (with the aliases
that mirrors and local copies use), and a pure ``convert`` function from one row to
``(prompt, prompt_harmful, category, data_type)`` tuples. ``prompt_harmful`` always comes from the
source (paper App. C), never from a classifier. ``data_type`` is the value that
``PromptSourceConfig.data_types`` filters on; its vocabulary is listed per schema below.

Column names are matched case-insensitively (the JailbreakBench hub files say ``Goal``, copies say
``goal``). The first field of each ``columns`` entry is the documented name; the rest are aliases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Converted = tuple[str, bool, str, str]
"""(prompt, prompt_harmful, category, data_type) of one prompt."""


@dataclass(frozen=True)
class RowContext:
    """What a converter may know besides the row: the split and subset it came from."""

    split: str
    subset: str | None
    path: str


@dataclass(frozen=True)
class SourceSchema:
    """How to read one dataset.

    Attributes:
        hub_id: default ``path`` (a hub id or a URL of the canonical file).
        default_subset: default hub config name.
        columns: field -> accepted column names, documented name first.
        optional: fields that may be absent.
        convert: row (field -> value) and context -> prompts.
        hub_kwargs: extra ``load_dataset`` arguments its dataset card asks for.
        dir_files: split -> file name, for a local directory holding the split files.
        data_types: the data_type values ``convert`` can emit (None: open vocabulary).
    """

    hub_id: str | None
    columns: dict[str, tuple[str, ...]]
    convert: Callable[[Mapping[str, Any], RowContext], Iterator[Converted]]
    optional: frozenset[str] = frozenset()
    default_subset: str | None = None
    hub_kwargs: dict[str, Any] = field(default_factory=dict)
    dir_files: dict[str, str] = field(default_factory=dict)
    data_types: tuple[str, ...] | None = None


_TRUE = {"1", "true", "yes", "harmful", "unsafe", "toxic"}
_FALSE = {"0", "false", "no", "benign", "safe", "unharmful"}


def parse_label(value: Any) -> bool:
    """A harmfulness label as written by any of the datasets: 1/0, true/false, unsafe/safe, ..."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"cannot read a harmfulness label from {value!r}; expected one of {sorted(_TRUE | _FALSE)}")


def _text(value: Any) -> str:
    """A cell as text; missing cells (None, NaN) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _harm_word(harmful: bool) -> str:
    return "harmful" if harmful else "benign"


# --- converters: one row -> prompts. Pure functions of (row, context). -------------------------


def _wildjailbreak(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    # data_type is one of vanilla_/adversarial_ x harmful/benign; adversarial rows carry their
    # prompt in `adversarial`, vanilla rows in `vanilla`.
    data_type = _text(row["data_type"]).strip()
    kind, _, harm = data_type.partition("_")
    if kind not in ("vanilla", "adversarial") or harm not in ("harmful", "benign"):
        raise ValueError(f"unknown WildJailbreak data_type {data_type!r}")
    yield _text(row[kind]), harm == "harmful", "", data_type


def _wildjailbreak_eval(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    harmful = parse_label(row["label"])
    data_type = _text(row.get("data_type")).strip() or f"adversarial_{_harm_word(harmful)}"
    yield _text(row["adversarial"]), harmful, "", data_type


def _orbench(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    # OR-Bench labels by file: or-bench-toxic is harmful, 80k and hard-1k are benign-but-scary.
    harmful = "toxic" in (ctx.subset or ctx.path).lower()
    yield _text(row["prompt"]), harmful, _text(row.get("category")), _harm_word(harmful)


def _fortress(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    # Each FORTRESS row pairs an adversarial (harmful) prompt with a benign counterpart.
    domain = _text(row.get("risk_domain"))
    yield _text(row["adversarial_prompt"]), True, domain, "adversarial"
    yield _text(row["benign_prompt"]), False, domain, "benign"


def _always_harmful(field_name: str) -> Callable[[Mapping[str, Any], RowContext], Iterator[Converted]]:
    def convert(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
        yield _text(row[field_name]), True, _text(row.get("category")), "harmful"

    return convert


def _xstest(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    harmful = parse_label(row["label"])
    prompt_type = _text(row.get("type"))
    yield _text(row["prompt"]), harmful, prompt_type, prompt_type or _harm_word(harmful)


def _jailbreakbench(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    # JBB-Behaviors has no label column: the split (file) says harmful or benign.
    if ctx.split not in ("harmful", "benign"):
        raise ValueError(
            f"jailbreakbench: split {ctx.split!r} of {ctx.path} is neither 'harmful' nor 'benign'; "
            "set `split: harmful` or `split: benign` (or `prompt_harmful`)"
        )
    yield _text(row["goal"]), ctx.split == "harmful", _text(row.get("category")), ctx.split


def _wildguardmix(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    label = _text(row["prompt_harm_label"]).strip()
    if not label:
        return  # a few rows carry no prompt label; they cannot be used without one
    harmful = parse_label(label)
    kind = "adversarial" if row.get("adversarial") in (True, "True", "true", 1) else "vanilla"
    yield _text(row["prompt"]), harmful, _text(row.get("subcategory")), f"{kind}_{_harm_word(harmful)}"


def _file(row: Mapping[str, Any], ctx: RowContext) -> Iterator[Converted]:
    # Without a label column the loader applies PromptSourceConfig.prompt_harmful (checked there).
    harmful = parse_label(row["label"]) if "label" in row else False
    yield _text(row["prompt"]), harmful, _text(row.get("category")), _harm_word(harmful)


SCHEMAS: dict[str, SourceSchema] = {
    # allenai/wildjailbreak, config "train" (train/train.tsv): vanilla, adversarial, completion, data_type.
    "wildjailbreak": SourceSchema(
        hub_id="allenai/wildjailbreak",
        default_subset="train",
        columns={"vanilla": ("vanilla",), "adversarial": ("adversarial",), "data_type": ("data_type",)},
        convert=_wildjailbreak,
        hub_kwargs={"delimiter": "\t", "keep_default_na": False},
        data_types=("vanilla_harmful", "vanilla_benign", "adversarial_harmful", "adversarial_benign"),
    ),
    # allenai/wildjailbreak, config "eval" (eval/eval.tsv): adversarial, label (1/0), data_type.
    "wildjailbreak_eval": SourceSchema(
        hub_id="allenai/wildjailbreak",
        default_subset="eval",
        columns={"adversarial": ("adversarial",), "label": ("label",), "data_type": ("data_type",)},
        optional=frozenset({"data_type"}),
        convert=_wildjailbreak_eval,
        hub_kwargs={"delimiter": "\t", "keep_default_na": False},
        data_types=("adversarial_harmful", "adversarial_benign"),
    ),
    # bench-llm/or-bench, configs or-bench-80k / or-bench-hard-1k (benign), or-bench-toxic (harmful).
    "orbench": SourceSchema(
        hub_id="bench-llm/or-bench",
        default_subset="or-bench-80k",
        columns={"prompt": ("prompt",), "category": ("category",)},
        optional=frozenset({"category"}),
        convert=_orbench,
        data_types=("harmful", "benign"),
    ),
    # ScaleAI/fortress_public: ID, adversarial_prompt, rubric, risk_domain, risk_subdomain, benign_prompt.
    "fortress": SourceSchema(
        hub_id="ScaleAI/fortress_public",
        columns={
            "adversarial_prompt": ("adversarial_prompt",),
            "benign_prompt": ("benign_prompt",),
            "risk_domain": ("risk_domain",),
        },
        optional=frozenset({"risk_domain"}),
        convert=_fortress,
        data_types=("adversarial", "benign"),
    ),
    # The authors' CSV (category, source, forbidden_prompt); walledai/StrongREJECT calls it prompt.
    "strongreject": SourceSchema(
        hub_id="https://raw.githubusercontent.com/alexandrasouly/strongreject/main/strongreject_dataset/strongreject_dataset.csv",
        columns={"forbidden_prompt": ("forbidden_prompt", "prompt"), "category": ("category",)},
        optional=frozenset({"category"}),
        convert=_always_harmful("forbidden_prompt"),
        data_types=("harmful",),
    ),
    # xstest_prompts.csv / walledai/XSTest: id, prompt, type, label (safe/unsafe), focus, note.
    "xstest": SourceSchema(
        hub_id="walledai/XSTest",
        columns={"prompt": ("prompt",), "label": ("label",), "type": ("type",)},
        optional=frozenset({"type"}),
        convert=_xstest,
    ),
    # JailbreakBench/JBB-Behaviors, config behaviors, splits harmful/benign: Index, Goal, Target,
    # Behavior, Category, Source (lower-case in some copies).
    "jailbreakbench": SourceSchema(
        hub_id="JailbreakBench/JBB-Behaviors",
        default_subset="behaviors",
        columns={"goal": ("goal", "prompt"), "category": ("category",)},
        optional=frozenset({"category"}),
        convert=_jailbreakbench,
        dir_files={"harmful": "harmful-behaviors.csv", "benign": "benign-behaviors.csv"},
        data_types=("harmful", "benign"),
    ),
    # llm-attacks harmful_behaviors.csv: goal, target; walledai/AdvBench calls it prompt.
    "advbench": SourceSchema(
        hub_id="walledai/AdvBench",
        columns={"goal": ("goal", "prompt")},
        convert=_always_harmful("goal"),
        data_types=("harmful",),
    ),
    # allenai/wildguardmix, configs wildguardtrain / wildguardtest: prompt, adversarial, response,
    # prompt_harm_label (harmful/unharmful), response_refusal_label, response_harm_label, subcategory.
    "wildguardmix": SourceSchema(
        hub_id="allenai/wildguardmix",
        default_subset="wildguardtrain",
        columns={
            "prompt": ("prompt",),
            "prompt_harm_label": ("prompt_harm_label",),
            "adversarial": ("adversarial",),
            "subcategory": ("subcategory",),
        },
        optional=frozenset({"adversarial", "subcategory"}),
        convert=_wildguardmix,
        data_types=("vanilla_harmful", "vanilla_benign", "adversarial_harmful", "adversarial_benign"),
    ),
    # Any local file: prompt, optional label (parse_label vocabulary), optional category.
    "file": SourceSchema(
        hub_id=None,
        columns={"prompt": ("prompt",), "label": ("label",), "category": ("category",)},
        optional=frozenset({"label", "category"}),
        convert=_file,
        data_types=("harmful", "benign"),
    ),
}


def resolve_columns(
    source: str, schema: SourceSchema, found: Sequence[str], mapping: Mapping[str, str] | None, where: str
) -> dict[str, str]:
    """Field -> actual column of the table, matching names case-insensitively.

    ``mapping`` (the config's ``columns``) names the column to use for a field and replaces that
    field's aliases. Raises ValueError naming the columns found and the ones expected.
    """
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(schema.columns))
    if unknown:
        raise ValueError(f"{source}: columns mapping has unknown field(s) {unknown}; fields are {list(schema.columns)}")
    by_lower = {name.lower(): name for name in found}
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for name, aliases in schema.columns.items():
        candidates = (mapping[name],) if name in mapping else aliases
        hit = next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)
        if hit is not None:
            resolved[name] = hit
        elif name not in schema.optional:
            missing.append(name if name not in mapping else f"{name} (mapped to {mapping[name]!r})")
    if missing:
        expected = {
            name: ("|".join(aliases) + (" (optional)" if name in schema.optional else ""))
            for name, aliases in schema.columns.items()
        }
        raise ValueError(
            f"{source}: {where} lacks column(s) {missing}. Found columns: {list(found)}. "
            f"Expected columns: {expected}. Map yours with `columns: {{field: your_column}}`."
        )
    return resolved
