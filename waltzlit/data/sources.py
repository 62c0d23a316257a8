"""Prompt sources: safety datasets (hub id or local file) -> ``PromptRecord`` pools.

One loading path for every source: ``datasets.load_dataset``, either on a hub id (or a local
snapshot directory of it) with the dataset card's config, or on a local/remote file through the
``csv`` (``.csv``; ``.tsv`` with ``delimiter="\\t"``), ``json`` (``.jsonl``/``.json``) or ``parquet``
builder. The per-dataset schemas live in :mod:`waltzlit.data.schemas`.

The paper's pool (§8): 10k WildJailbreak adversarial-harmful + 10k OR-Bench-80K prompts, with
OR-Bench-Hard-1K (an evaluation set) removed from OR-Bench-80K, split 5k + 5k per stage. That is
``build_prompt_pool([wj, orbench_80k], exclude=[orbench_hard_1k])`` then ``split_for_stages``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from waltzlit.data.schemas import SCHEMAS, RowContext, SourceSchema, resolve_columns
from waltzlit.types import PromptRecord

log = logging.getLogger(__name__)

SOURCE_NAMES: tuple[str, ...] = ("builtin", *SCHEMAS)
"""Registered source kinds."""

_FILE_BUILDERS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {"keep_default_na": False}),
    ".tsv": ("csv", {"delimiter": "\t", "keep_default_na": False}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


@dataclass
class PromptSourceConfig:
    """One prompt source of a pool: which dataset, which part of it, how many prompts."""

    name: str
    """Source kind: builtin, wildjailbreak, wildjailbreak_eval, orbench, fortress, strongreject,
    xstest, jailbreakbench, advbench, wildguardmix or file."""
    path: str | None = None
    """Hub id, local snapshot directory, local file (csv/tsv/jsonl/parquet) or file URL; None takes
    the kind's documented hub id."""
    subset: str | None = None
    """Hub config name (e.g. or-bench-hard-1k); None takes the kind's default. For a local
    OR-Bench file, a subset containing "toxic" marks the prompts harmful."""
    split: str | None = None
    """Split to read; None reads every split (JailbreakBench: harmful and benign). For a local
    file it names the file's split (JailbreakBench: harmful/benign, else read from the file name)."""
    num_samples: int | None = None
    """Prompts to sample (seeded) after exclusion and de-duplication; None keeps all."""
    columns: dict[str, str] | None = None
    """Field -> column of your table, for files whose columns differ from the documented schema
    (e.g. {prompt: question, label: is_harmful} for kind file)."""
    prompt_harmful: bool | None = None
    """Label every prompt of this source harmful (True) or benign (False), overriding its own
    labels; needed for kind file when the file has no label column."""
    data_types: list[str] | None = None
    """Keep only these data types (WildJailbreak: adversarial_harmful, ...; FORTRESS: adversarial,
    benign; XSTest: the type column; most others: harmful, benign)."""
    tag: str | None = None
    """PromptRecord.source of the records; None: the kind (plus the subset when not the default)."""
    revision: str | None = None
    """Hub revision (commit or tag) to pin."""
    holdout: float | None = None
    """Fraction of the source held out for evaluation, per label (harmful / benign), before
    exclusion, de-duplication and sampling; None: no split. Which prompts are held out depends only
    on their text and ``holdout_seed`` (see :func:`holdout_partition`), so a training config with
    ``part: train`` and an evaluation config with ``part: eval`` get disjoint prompts."""
    part: Literal["train", "eval"] = "train"
    """With ``holdout``: keep the training part or the held-out evaluation part."""
    holdout_seed: int = 0
    """Seed of the holdout partition (independent of the run's seed, so every run splits alike)."""

    def __post_init__(self) -> None:
        if self.name not in SOURCE_NAMES:
            raise ValueError(f"data source name {self.name!r} is unknown; allowed names: {list(SOURCE_NAMES)}")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise ValueError(f"{self.name}.holdout: must be a fraction in (0, 1) or null, got {self.holdout}")
        if self.part not in ("train", "eval"):
            raise ValueError(f"{self.name}.part: must be 'train' or 'eval', got {self.part!r}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"{self.name}.num_samples: must be >= 1 or null, got {self.num_samples}")
        if self.name == "builtin":
            if any(v is not None for v in (self.path, self.subset, self.split, self.columns)):
                raise ValueError("builtin: takes no path, subset, split or columns")
            return
        schema = SCHEMAS[self.name]
        if self.name == "file" and not self.path:
            raise ValueError("file: set `path` to a local .csv/.tsv/.jsonl/.parquet file")
        unknown = sorted(set(self.columns or {}) - set(schema.columns))
        if unknown:
            raise ValueError(f"{self.name}.columns: unknown field(s) {unknown}; fields are {list(schema.columns)}")
        vocabulary = schema.data_types
        if self.data_types and vocabulary is not None and set(self.data_types) - set(vocabulary):
            bad = sorted(set(self.data_types) - set(vocabulary))
            raise ValueError(f"{self.name}.data_types: unknown {bad}; allowed: {list(vocabulary)}")


def normalize_prompt(text: str) -> str:
    """The de-duplication key: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def label_counts(records: list[PromptRecord]) -> dict[str, dict[str, int]]:
    """{source: {"harmful": n, "benign": m}} of a record list (for logs and tests)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"harmful": 0, "benign": 0})
    for r in records:
        counts[r.source]["harmful" if r.prompt_harmful else "benign"] += 1
    return dict(counts)


def holdout_partition(records: list[PromptRecord], fraction: float, seed: int = 0) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(train, eval) parts of ``records``: ``round(fraction * n)`` of each label's n prompts held out.

    Each label's prompts are ranked by sha256(seed, normalised text) and the first ones are held
    out. The rank of a prompt does not depend on the order or the other contents of the file, so the
    split is reproducible anywhere, and identical texts always land in the same part. Both parts
    keep the records' original order.
    """
    held: set[int] = set()
    for harmful in (True, False):
        group = [i for i, r in enumerate(records) if r.prompt_harmful == harmful]
        ranked = sorted(group, key=lambda i: hashlib.sha256(f"{seed}|{normalize_prompt(records[i].prompt)}".encode()).digest())
        held.update(ranked[: round(fraction * len(group))])
    train = [r for i, r in enumerate(records) if i not in held]
    evaluation = [r for i, r in enumerate(records) if i in held]
    return train, evaluation


def _rng(seed: int, cfg: PromptSourceConfig, purpose: str) -> random.Random:
    # String seeds hash deterministically (sha512), so the draw is stable across runs and machines.
    return random.Random(f"{seed}|{purpose}|{cfg.name}|{cfg.path}|{cfg.subset}|{cfg.split}|{cfg.data_types}")


def _sample(records: list[PromptRecord], cfg: PromptSourceConfig, seed: int) -> list[PromptRecord]:
    n = cfg.num_samples
    if n is None or n >= len(records):
        if n is not None and n > len(records):
            log.warning("%s: asked for %d prompts, only %d available; using all", _tag(cfg), n, len(records))
        return list(records)
    return _rng(seed, cfg, "sample").sample(records, n)


def _tag(cfg: PromptSourceConfig) -> str:
    if cfg.tag:
        return cfg.tag
    default = SCHEMAS[cfg.name].default_subset if cfg.name in SCHEMAS else None
    return cfg.name if cfg.subset in (None, default) else f"{cfg.name}/{cfg.subset}"


def _file_builder(path: str) -> tuple[str, dict] | None:
    lower = path.lower().split("?", 1)[0]
    return next((b for ext, b in _FILE_BUILDERS.items() if lower.endswith(ext)), None)


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _file_split(cfg: PromptSourceConfig, schema: SourceSchema, filename: str) -> str:
    """The split a single file stands for: explicit, else read off its name (JBB), else train."""
    if cfg.split:
        return cfg.split
    for split in schema.dir_files:
        if split in filename.lower():
            return split
    if schema.dir_files and cfg.prompt_harmful is not None:
        return "harmful" if cfg.prompt_harmful else "benign"
    return "train"


def _split_files(directory: Path, schema: SourceSchema) -> dict[str, str]:
    """split -> file of a directory holding the kind's split files (directly or under data/)."""
    found = {}
    for split, name in schema.dir_files.items():
        for candidate in (directory / name, directory / "data" / name):
            if candidate.is_file():
                found[split] = str(candidate)
                break
    return found


SHIPPED_PROMPTS = "waltzlit/assets/prompts/"
"""Repository path of the prompt sets shipped with the package (XSTest, AdvBench, JailbreakBench)."""


def _local_path(path: str) -> Path:
    """``path`` on disk; a shipped prompt set's repository path resolves from any working directory."""
    local = Path(path).expanduser()
    if not local.exists() and path.startswith(SHIPPED_PROMPTS):
        shipped = Path(__file__).resolve().parents[1] / "assets" / "prompts" / path[len(SHIPPED_PROMPTS):]
        if shipped.exists():
            return shipped
    return local


def _check_local_file(name: str, path: Path, builder: str) -> None:
    """Errors a user can fix, named with the file: empty, or (JSON lines) the first line that is
    not a JSON object."""
    if path.stat().st_size == 0:
        raise ValueError(f"{name}: {path} is empty")
    if builder == "json" and path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{name}: {path} line {number} is not valid JSON ({err})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{name}: {path} line {number} is a JSON {type(row).__name__}, not an object")


def _load_tables(cfg: PromptSourceConfig, schema: SourceSchema) -> list[tuple[str, object, str]]:
    """[(split, datasets.Dataset, description)] of the source, all through ``load_dataset``."""
    from datasets import Dataset, load_dataset

    path = cfg.path or schema.hub_id
    subset = cfg.subset or schema.default_subset
    local = _local_path(path)
    builder = _file_builder(path)
    if builder is not None and local.is_file():
        _check_local_file(cfg.name, local, builder[0])
    try:
        if builder is not None and (local.is_file() or _is_url(path)):
            location = path if _is_url(path) else str(local)
            split = _file_split(cfg, schema, Path(path.split("?", 1)[0]).name)
            loaded = load_dataset(builder[0], data_files={split: location}, **builder[1])
        elif local.is_dir() and _split_files(local, schema):
            files = {s: f for s, f in _split_files(local, schema).items() if cfg.split in (None, s)}
            if not files:
                raise ValueError(f"{cfg.name}: no file for split {cfg.split!r} in {local}")
            loaded = load_dataset("csv", data_files=files, keep_default_na=False)
        elif local.is_dir():  # a local snapshot of the hub dataset (its README declares the configs)
            loaded = load_dataset(str(local), subset, split=cfg.split, **schema.hub_kwargs)
        elif builder is not None or path.startswith(("/", ".", "~")):
            raise FileNotFoundError(f"{cfg.name}: no such file or directory: {path}")
        else:
            loaded = load_dataset(path, subset, split=cfg.split, revision=cfg.revision, **schema.hub_kwargs)
    except (FileNotFoundError, ValueError) as err:
        if builder is not None and local.is_file() and "corresponds to no data" in str(err):
            raise ValueError(f"{cfg.name}: {local} has no rows (a header only?)") from None
        raise
    except Exception as err:  # hub unreachable, gated dataset, bad config name ...
        if builder is not None and local.is_file():  # a local file: the hub has nothing to do with it
            cause = err.__cause__ or err.__context__ or err
            raise ValueError(f"{cfg.name}: could not read {local} as {builder[0]}: {type(cause).__name__}: {cause}") from err
        raise RuntimeError(
            f"{cfg.name}: could not load {path!r} (subset {subset!r}, split {cfg.split!r}): {err}. "
            "Without hub access, download the dataset and set `path` to the local file or directory."
        ) from err
    if isinstance(loaded, Dataset):
        return [(cfg.split or "train", loaded, f"{path} [{cfg.split}]")]
    return [(split, table, f"{path} [{split}]") for split, table in loaded.items()]


def _load_all(cfg: PromptSourceConfig) -> list[PromptRecord]:
    """Every prompt of the source, filtered by data_types and holdout part, in file order (no sampling)."""
    if cfg.name == "builtin":
        from waltzlit.data.builtin import builtin_prompts

        records = [(r, "harmful" if r.prompt_harmful else "benign") for r in builtin_prompts()]
        if cfg.tag:
            records = [(replace(r, source=cfg.tag), t) for r, t in records]
    else:
        records = _load_schema_records(cfg)
    if cfg.data_types:
        present = Counter(t for _, t in records)
        kept = [(r, t) for r, t in records if t in cfg.data_types]
        if not kept:
            raise ValueError(f"{cfg.name}: no prompt has data_type in {cfg.data_types}; present: {dict(present)}")
        records = kept
    if cfg.prompt_harmful is not None:
        records = [(replace(r, prompt_harmful=cfg.prompt_harmful), t) for r, t in records]
    kept = [r for r, _ in records]
    if cfg.holdout is not None:
        train, evaluation = holdout_partition(kept, cfg.holdout, cfg.holdout_seed)
        kept = train if cfg.part == "train" else evaluation
    return kept


def _load_schema_records(cfg: PromptSourceConfig) -> list[tuple[PromptRecord, str]]:
    schema = SCHEMAS[cfg.name]
    path = cfg.path or schema.hub_id or ""
    # The default subset only describes the default hub dataset, not a file the user points at.
    subset = cfg.subset or (schema.default_subset if cfg.path is None else None)
    tag = _tag(cfg)
    records: list[tuple[PromptRecord, str]] = []
    empty = 0
    for split, table, where in _load_tables(cfg, schema):
        cols = resolve_columns(cfg.name, schema, table.column_names, cfg.columns, where)
        if cfg.name == "file" and "label" not in cols and cfg.prompt_harmful is None:
            raise ValueError(
                f"file: {where} has no label column (found {table.column_names}); map one with "
                "`columns: {label: your_column}` or set `prompt_harmful: true|false`"
            )
        data = table.select_columns(list(cols.values())).to_dict()
        fields = list(cols)
        ctx = RowContext(split=split, subset=subset, path=path)
        for values in zip(*(data[cols[f]] for f in fields)):
            for prompt, harmful, category, data_type in schema.convert(dict(zip(fields, values)), ctx):
                if not prompt.strip():
                    empty += 1  # blank cells (e.g. a vanilla row's empty adversarial field)
                    continue
                records.append((PromptRecord(prompt, harmful, tag, category), data_type))
    if empty:
        log.info("%s: skipped %d empty prompts", tag, empty)
    return records


def load_prompt_source(cfg: PromptSourceConfig, seed: int = 0) -> list[PromptRecord]:
    """The source's prompts, ``cfg.num_samples`` of them drawn with ``seed`` (all when None)."""
    return _sample(_load_all(cfg), cfg, seed)


def build_prompt_pool(
    sources: list[PromptSourceConfig],
    seed: int = 0,
    deduplicate: bool = True,
    exclude: list[PromptSourceConfig] | None = None,
) -> list[PromptRecord]:
    """The concatenated prompts of ``sources``.

    Per source, in order: load everything, drop prompts that appear in any ``exclude`` source,
    drop duplicates (normalised text, within the source and against earlier sources) when
    ``deduplicate``, then sample ``num_samples``. Filtering before sampling is what gives the paper
    its full 10k OR-Bench-80K prompts after OR-Bench-Hard-1K is removed.
    """
    excluded = {normalize_prompt(r.prompt) for cfg in exclude or [] for r in _load_all(cfg)}
    pool: list[PromptRecord] = []
    seen: set[str] = set()
    for cfg in sources:
        loaded = _load_all(cfg)
        kept, n_excluded, n_dup = [], 0, 0
        for record in loaded:
            key = normalize_prompt(record.prompt)
            if key in excluded:
                n_excluded += 1
            elif deduplicate and key in seen:
                n_dup += 1
            else:
                kept.append(record)
                if deduplicate:
                    seen.add(key)
        sampled = _sample(kept, cfg, seed)
        if deduplicate and len(sampled) < len(kept):
            # Unsampled prompts must not block the same text in a later source.
            seen.difference_update(normalize_prompt(r.prompt) for r in kept)
            seen.update(normalize_prompt(r.prompt) for r in sampled)
        pool.extend(sampled)
        log.info(
            "%s: %d loaded, %d excluded, %d duplicates, %d kept",
            _tag(cfg),
            len(loaded),
            n_excluded,
            n_dup,
            len(sampled),
        )
    return pool


def split_for_stages(records: list[PromptRecord], seed: int = 0) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Two disjoint halves of the pool, one per training stage (paper §2.4: 5k WJ + 5k OR-Bench each).

    Every (source, prompt_harmful) group is shuffled and cut in half, so both stages see each source
    and label in the same proportion. Odd groups give their extra prompt to alternating stages.
    """
    groups: dict[tuple[str, bool], list[PromptRecord]] = defaultdict(list)
    for record in records:
        groups[(record.source, record.prompt_harmful)].append(record)
    first: list[PromptRecord] = []
    second: list[PromptRecord] = []
    extra_to_first = True
    for (source, harmful), members in groups.items():
        members = list(members)
        random.Random(f"{seed}|stages|{source}|{harmful}").shuffle(members)
        half = len(members) // 2
        if len(members) % 2:
            half += 1 if extra_to_first else 0
            extra_to_first = not extra_to_first
        first.extend(members[:half])
        second.extend(members[half:])
    random.Random(f"{seed}|stage1").shuffle(first)
    random.Random(f"{seed}|stage2").shuffle(second)
    return first, second
