"""The environment variables diffpref reads, each parsed here, with one clear error.

A bad value is an :class:`EnvError` (the CLI prints the one line and exits with code 2, as
for bad params) naming the variable and the values it accepts; the CLI checks
every variable (:func:`check`) before any work, and the Snakefile when it parses. An empty
value counts as unset (``DIFFPREF_MLFLOW= diffpref …``). Standard library only: the CLI
and the MLflow writer read these before importing anything heavy.
"""

from __future__ import annotations

import os
import re

MLFLOW = "DIFFPREF_MLFLOW"  # the stages' MLflow records: on (default) or off
THREADS = "DIFFPREF_THREADS"  # torch CPU threads when --threads is not given (DVC's stages)
PIPELINE_ID = "DIFFPREF_PIPELINE_ID"  # the pipeline execution a stage's run nests under
LAUNCHER = "DIFFPREF_LAUNCHER_PID"  # set by launch.relaunch: the launcher's pid
# set by a distributed launcher (accelerate launch, torchrun) in each of its processes
RANK, LOCAL_RANK, WORLD_SIZE = "RANK", "LOCAL_RANK", "WORLD_SIZE"

ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
MAX_THREADS = 1024
MAX_PROCESSES = 65_536
# The id is a tag value MLflow is searched by (and part of a filter string): no quotes, no
# spaces, bounded; the ids diffpref makes (snakemake-<hex>, dvc-<pid>-<start>) fit.
PIPELINE_ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class EnvError(ValueError):
    """An environment variable with a value diffpref does not accept."""


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value and value.strip() else None


def flag(name: str, default: bool) -> bool:
    """A switch: 1/true/yes/on or 0/false/no/off, in any case."""
    raw = _raw(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ON or value in OFF:
        return value in ON
    raise EnvError(
        f"{name}={raw!r}: not a switch; use one of {', '.join(ON)} (on) or {', '.join(OFF)} (off)"
    )


def whole(name: str, low: int, high: int) -> int | None:
    """A whole number from ``low`` to ``high``, or None when unset."""
    raw = _raw(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise EnvError(f"{name}={raw!r}: not a whole number from {low} to {high:,}")
    return value


def mlflow_enabled() -> bool:
    """Whether stages keep their MLflow record (``DIFFPREF_MLFLOW``, default on)."""
    return flag(MLFLOW, True)


def threads() -> int | None:
    """``DIFFPREF_THREADS``: torch CPU threads; None (or 0): torch's default."""
    return whole(THREADS, 0, MAX_THREADS) or None


def rank() -> int:
    """This process's rank in a launched group; 0 outside one."""
    return whole(RANK, 0, MAX_PROCESSES - 1) or 0


def local_rank() -> int | None:
    """This process's rank on its machine (its GPU), None outside a launched group."""
    return whole(LOCAL_RANK, 0, MAX_PROCESSES - 1)


def world_size() -> int | None:
    """Processes in the launched group, None outside one."""
    return whole(WORLD_SIZE, 1, MAX_PROCESSES)


def launcher_pid() -> int | None:
    return whole(LAUNCHER, 1, 2**22)  # Linux's pid_max limit


def pipeline_id() -> str | None:
    """``DIFFPREF_PIPELINE_ID``, checked (:data:`PIPELINE_ID_RULE`), or None when unset."""
    raw = _raw(PIPELINE_ID)
    if raw is not None and not PIPELINE_ID_RULE.fullmatch(raw):
        raise EnvError(
            f"{PIPELINE_ID}={raw[:120]!r}: use letters, digits, '.', '_' and '-', starting with "
            "a letter or digit, at most 100 characters (it names the pipeline's MLflow run)"
        )
    return raw


def check() -> None:
    """Every variable above, parsed once: the first bad one raises its :class:`EnvError`."""
    for read in (mlflow_enabled, threads, rank, local_rank, world_size, launcher_pid, pipeline_id):
        read()
