"""Locating and merging the YAML settings that live in the repository's ``config/`` folder."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

CONFIG_DIR_ENV = "FLARE_CONFIG_DIR"


def config_dir() -> Path:
    """The ``config/`` folder: ``$FLARE_CONFIG_DIR`` or the repository's, next to ``src/``."""
    if os.environ.get(CONFIG_DIR_ENV):
        path = Path(os.environ[CONFIG_DIR_ENV])
    else:
        path = Path(__file__).resolve().parents[2] / "config"
    if not (path / "models").is_dir():
        raise FileNotFoundError(
            f"model settings folder {path / 'models'} not found; install the package from a checkout "
            f"(pip install -e .) or set {CONFIG_DIR_ENV} to a folder holding models/<model>.yaml"
        )
    return path


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def model_settings(model: str, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """Paper settings of ``model`` (``{"model": …, "train": …}``), with ``dataset``'s overrides applied.

    Read from ``config/models/<model>.yaml``: top-level ``model`` and ``train`` sections are the
    defaults; ``datasets.<dataset>`` holds per-dataset overrides of either section.
    """
    path = config_dir() / "models" / f"{model}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise KeyError(f"no settings file for model {model!r} ({path}); known: {', '.join(known)}")
    raw = load_yaml(path)
    unknown = set(raw) - {"model", "train", "datasets"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; allowed: model, train, datasets")
    settings = {"model": raw.get("model") or {}, "train": raw.get("train") or {}}
    if dataset is not None:
        settings = deep_merge(settings, (raw.get("datasets") or {}).get(dataset) or {})
    return settings
