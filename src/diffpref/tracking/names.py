"""Every name and value of a run's record made valid for MLflow before it is logged.

A record the store refuses can never be written: spooled, it would fail on every replay. So
the writer passes each key (param, metric, tag), value, run name, pipeline id and dataset name
through here first. The rules are the installed MLflow's own (``mlflow.utils.validation``:
its key check, its lengths), not copies of them. A key that breaks them is changed
deterministically and stays distinct from every other: characters MLflow refuses become
``_``, path tricks (``a/../b``, a leading ``/``, a trailing ``/``) are taken apart, it is
shortened to fit, and it ends in ``-`` and 8 hex digits of its original's hash. A value over
its limit is cut; characters no store can hold (NUL, which PostgreSQL refuses, and unpaired
surrogates, which no UTF-8 encoder writes) become U+FFFD. What was changed is kept, original
beside what was logged, in the run's :data:`ORIGINALS_FILE` artifact.

Metric values are logged as they are: MLflow accepts NaN (a SQL store keeps a NaN flag) and
±inf (stored as ±1.8e308, the largest double).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlflow.utils.validation import (
    MAX_DATASET_DIGEST_SIZE,
    MAX_DATASET_NAME_SIZE,
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    path_not_unique,
    validate_param_and_metric_name,
)

ORIGINALS_FILE = "mlflow_names.json"  # the run's artifact: {kind: {logged: original}}
RENAMED_TAG = "diffpref.renamed"  # set when anything was changed: where the originals are
# A run's name is the column runs.name, VARCHAR(250) in MLflow's SQL schema (PostgreSQL
# enforces it; tests/test_tracking.py checks the bound against the installed schema)
MAX_RUN_NAME_LENGTH = MAX_ENTITY_KEY_LENGTH
_HASH_CHARS = 8


def is_valid_key(name: str, limit: int = MAX_ENTITY_KEY_LENGTH) -> bool:
    """What MLflow accepts as a param, metric or tag key."""
    return (
        0 < len(name) <= limit
        and bool(validate_param_and_metric_name(name))
        and not path_not_unique(name)
    )


def key(name: str, limit: int = MAX_ENTITY_KEY_LENGTH) -> str:
    """``name`` if MLflow accepts it as a key, else a valid key made from it (see the module).
    Also the form of the ids diffpref searches runs by (a pipeline id, a record id): a valid
    key holds no quote, so it is safe inside a filter string."""
    if is_valid_key(name, limit):
        return name
    chars = "".join(c if validate_param_and_metric_name(c) else "_" for c in name)
    # no empty, "." or ".." path segment (so no leading, trailing or double "/" either)
    parts = [p if p.strip(".") else "_" * len(p) for p in chars.split("/") if p]
    clean = "/".join(parts)
    if clean.startswith(".."):
        clean = "_" + clean[1:]
    suffix = "-" + _hash(name)
    return clean[: limit - len(suffix)] + suffix


def label(text: str, limit: int) -> str:
    """A free-text name (a run's, a dataset's): storable, and at most ``limit`` characters,
    shortened with its hash so that two long names stay distinct."""
    clean = _storable(text)
    if clean == text and len(text) <= limit:
        return text
    suffix = "-" + _hash(text)
    return clean[: limit - len(suffix)] + suffix


def value(text: str, limit: int) -> str:
    """A param or tag value: storable, cut to ``limit`` characters."""
    return _storable(text[:limit])


def _storable(text: str) -> str:
    if "\0" not in text and _encodes(text):
        return text
    return "".join("\ufffd" if c == "\0" or not _encodes(c) else c for c in text)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()[:_HASH_CHARS]


class Names:
    """Makes one record's names and values valid, keeping the original of each it changed
    (``originals``: kind -> logged -> original)."""

    def __init__(self) -> None:
        self.originals: dict[str, dict[str, str]] = {}

    def _kept(self, kind: str, logged: str, original: str) -> str:
        if logged != original:
            self.originals.setdefault(kind, {})[logged] = original
        return logged

    def key(self, kind: str, name: str) -> str:
        return self._kept(kind, key(str(name)), str(name))

    def label(self, kind: str, text: str, limit: int) -> str:
        return self._kept(kind, label(str(text), limit), str(text))

    def params(self, params: dict[str, Any]) -> dict[str, str]:
        return self._pairs("param", params, MAX_PARAM_VAL_LENGTH)

    def tags(self, tags: dict[str, Any]) -> dict[str, str]:
        return self._pairs("tag", tags, MAX_TAG_VAL_LENGTH)

    def _pairs(self, kind: str, pairs: dict[str, Any], limit: int) -> dict[str, str]:
        out = {}
        for name, text in pairs.items():
            k = self.key(kind, name)
            out[k] = logged = value(str(text), limit)
            if logged != str(text):
                self.originals.setdefault(f"{kind} value", {})[k] = str(text)
        return out

    def metrics(self, metrics: list) -> list[tuple[str, Any, Any]]:
        """``(key, value, step)`` with valid keys; values and steps as they are (a value MLflow
        cannot take is no stage's: it refuses that record for its content)."""
        return [(self.key("metric", k), v, s) for k, v, s in metrics]

    def dataset(self, name: str, digest: str) -> tuple[str, str]:
        return (
            self.label("dataset name", name, MAX_DATASET_NAME_SIZE),
            self.label("dataset digest", digest, MAX_DATASET_DIGEST_SIZE),
        )

    def write(self, folder: Path) -> Path:
        """The originals as :data:`ORIGINALS_FILE` in ``folder``."""
        path = folder / ORIGINALS_FILE
        path.write_text(json.dumps(self.originals, indent=1, sort_keys=True) + "\n")
        return path
