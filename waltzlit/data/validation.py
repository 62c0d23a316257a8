"""Checks of prompt-source settings that can run before anything is loaded.

Loading a pool reads its sources in order, and the paper's pool downloads from the hub first: a
typo in the path of a later local file would otherwise surface only after minutes of downloading.
These checks touch only the local filesystem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from waltzlit.data.sources import PromptSourceConfig

_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def _looks_local(cfg: PromptSourceConfig, path: str) -> bool:
    """A path that can only mean this machine's filesystem (a hub id like ``org/name`` does not)."""
    if path.startswith(("http://", "https://", "hf://", "s3://", "gs://")):
        return False
    return cfg.name == "file" or path.startswith(("/", ".", "~")) or path.lower().endswith(_FILE_SUFFIXES)


def check_local_paths(sources: Sequence[PromptSourceConfig], key: str) -> None:
    """Raise FileNotFoundError, naming ``key[i].path``, for a local path that does not exist."""
    for index, cfg in enumerate(sources):
        if cfg.path and _looks_local(cfg, cfg.path) and not Path(cfg.path).expanduser().exists():
            raise FileNotFoundError(
                f"{key}[{index}].path: no such file or directory: {cfg.path!r} (source {cfg.name!r}). Allowed: "
                "an existing local .csv/.tsv/.jsonl/.json/.parquet file or snapshot directory, an http(s) URL, "
                "or a hub id."
            )
