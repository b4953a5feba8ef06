"""The base of every validated params model, which records the keys a stage reads.

Reruns are only exact if each stage's declared params (:mod:`diffpref.config.dag`) are the
values it really uses. While :func:`recording` is active, every field a stage reads from the
validated config is logged under its ``params.yaml`` key with its resolved value (profile
merged, defaults filled in); the log is written beside the stage's outputs and to its MLflow
run, and tests compare it with the declared table. Reads of a sub-model are not logged, only
its leaves; iterating a mapping of models (``objectives``) logs the mapping's names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
)
from pydantic_core import PydanticCustomError, to_jsonable_python

READS_FILE = "_reads.json"  # in a stage's output folder: the keys it read, with their values
_log: dict[str, Any] | None = None  # one stage per process: a module-level log suffices


@contextmanager
def recording() -> Iterator[dict[str, Any]]:
    """Log every key read from a bound config until the block ends; yields the log."""
    global _log
    outer, _log = _log, {}
    try:
        yield _log
    finally:
        _log = outer


@contextmanager
def paused() -> Iterator[None]:
    """Reads for the MLflow record only (a figure's size, say): no stage output depends on
    them, so they are no params dependency."""
    global _log
    outer, _log = _log, None
    try:
        yield
    finally:
        _log = outer


def record(key: str, value: Any) -> None:
    """Log a read made without attribute access (a whole mapping dumped at once)."""
    if _log is not None:
        _log[key] = to_jsonable_python(value)


def write_reads(folder: Path, reads: dict[str, Any]) -> None:
    """The keys a stage read with their values, sorted (byte-identical across equal runs),
    written atomically into its output ``folder``."""
    tmp = folder / f".{READS_FILE}.tmp"
    tmp.write_text(json.dumps(dict(sorted(reads.items())), indent=2, sort_keys=True) + "\n")
    tmp.replace(folder / READS_FILE)


def _not_bool(kind: str):
    """A before-validator refusing booleans: pydantic's lax mode reads ``true`` as 1, so a
    careless ``steps: true`` (or YAML's ``yes``/``on``) would silently train one step."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(
                f"{kind}_not_bool",
                f"Input should be a valid {kind}, not a boolean "
                "(YAML reads true/false, yes/no and on/off as booleans)",
            )
        return value

    return BeforeValidator(check)


# Every number in params: ints that are no booleans, floats that are no booleans and finite
# (``Settings`` refuses NaN and ±inf too, so a float annotated as plain ``float`` is covered).
# A test walks every model and fails on a plain ``int`` or ``float`` field.
Int = Annotated[int, _not_bool("integer")]
Float = Annotated[float, _not_bool("number")]

# Sizes that allocate or loop, bounded far above any real run of this benchmark, so that a
# typo (three zeros too many) is an error naming the key, not an out-of-memory crash an hour in.
Seed = Annotated[Int, Field(ge=0, le=2**32 - 1)]  # numpy's and torch's generators both take it
Steps = Annotated[Int, Field(ge=1, le=1_000_000)]  # optimizer / training steps
BatchSize = Annotated[Int, Field(ge=1, le=65_536)]
LearningRate = Annotated[Float, Field(gt=0, le=1)]
Probability = Annotated[Float, Field(ge=0, le=1)]


def _printable(value: str) -> str:
    """No control characters: a NUL ends a path at the C level, a newline splits a log line."""
    if bad := next((c for c in value if ord(c) < 32 or ord(c) == 127), None):
        raise PydanticCustomError(
            "control_character",
            "Text should hold no control characters (found {char})",
            {"char": repr(bad)},
        )
    return value


# Free text that names a thing (a reward, a column) or a place (a file, a hub id): bounded
Name = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_printable)]
PathText = Annotated[
    str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_printable)
]


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Settings(BaseModel):
    """Strict (unknown keys are errors; floats finite: ``.inf``, ``.nan`` and ``1e309``, which
    YAML reads as inf, are refused) and, once :func:`bind` placed it in the config tree, logs
    each field read while :func:`recording` is active."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # fields that are no params.yaml key (an objective's name is its mapping key)
    UNRECORDED: ClassVar[frozenset[str]] = frozenset()
    # fields whose model sits at this model's own key (an objective's hyper-parameters)
    FLAT: ClassVar[frozenset[str]] = frozenset()

    _key: str | None = PrivateAttr(None)  # None: not in a bound config, nothing logged
    _sources: dict[str, str | None] | None = PrivateAttr(None)  # per-field keys (train_for)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if _log is None or name[0] == "_" or name not in type(self).__pydantic_fields__:
            return value
        key = self.key_of(name)
        if key is None or isinstance(value, BaseModel):
            return value
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, Settings) for v in value.values())
        ):
            return _Names(value, key)
        _log[key] = to_jsonable_python(value)
        return value

    def key_of(self, name: str) -> str | None:
        """The params.yaml key of field ``name`` (None: not logged)."""
        if self._key is None or name in self.UNRECORDED:
            return None
        if self._sources is not None:
            return self._sources.get(name, join(self._key, name))
        return join(self._key, name)


class _Names(Mapping):
    """A mapping of models (``objectives``) whose item lookup reads nothing, while listing its
    names (iteration, ``len``, ``in``) reads the key: a stage that loops over the objectives
    depends on which there are, not on their settings."""

    def __init__(self, items: dict[str, Settings], key: str):
        self._items, self._key = items, key

    def _listed(self) -> None:
        record(self._key, sorted(self._items))

    def __getitem__(self, name: str) -> Settings:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._listed()
        return iter(self._items)

    def __len__(self) -> int:
        self._listed()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._listed()
        return name in self._items


def bind(model: Settings, key: str = "") -> None:
    """Give ``model`` and every model below it its params.yaml key, so reads can be logged."""
    model._key = key
    for name in type(model).__pydantic_fields__:
        value = model.__dict__.get(name)
        sub = key if name in model.FLAT else join(key, name)
        if isinstance(value, Settings):
            bind(value, sub)
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, Settings):
                    bind(v, join(sub, str(k)))
