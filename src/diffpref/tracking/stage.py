"""The stage's side of its MLflow run: collect what the stage reports and hand it to the writer
process (:mod:`diffpref.tracking.writer`), which is started with the stage."""

from __future__ import annotations

import fcntl
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpref import env, launch, settings
from diffpref.tracking.provenance import flatten, pipeline_id


def run_name(
    stage: str, objective: str | None, seed: int | None = None, variant: str | None = None
) -> str:
    """``train@dpo/seed1``: the stage, its objective and its training replicate; a later
    online round or a compute-matched control adds its ``variant`` (``/round2``,
    ``/matched2``)."""
    name = stage + (f"@{objective}" if objective else "") + ("" if seed is None else f"/seed{seed}")
    return name + (f"/{variant}" if variant else "")


@dataclass
class StageRun:
    """Collects what a stage reports; written to MLflow when the stage ends. ``inputs``: the
    data folders the stage reads (name, path), recorded as MLflow datasets with their content
    digests so a result can be traced to the data it came from."""

    stage: str
    objective: str | None
    params: dict[str, Any]
    params_hash: str
    seed: int | None = None
    inputs: list[tuple[str, str]] = field(default_factory=list)
    enabled: bool = True
    rnd: int | None = None  # the online round of a model's job (tag ``round``)
    variant: str | None = None  # a later round's or a control's (run name; tag ``model``)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    figures: list[tuple[str, str, Callable[[], tuple]]] = field(default_factory=list)
    _scratch: str | None = None

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        """``value`` as a double: an int too large for one is ±inf (as MLflow stores it), not
        a stage that fails on its record."""
        try:
            number = float(value)
        except OverflowError:
            number = math.inf if value > 0 else -math.inf
        self.metrics.append((key, number, int(step)))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float):
                self.log_metric(k, v, step)

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        """Copy a file (or a folder, as ``name``) into the run's artifacts when it ends."""
        self.artifacts.append((str(path), name or Path(path).name))

    def log_figure(self, name: str, draw: str, args: Callable[[], tuple] = tuple) -> None:
        """A figure for the record only, drawn when the stage's work is done (skipped when
        nothing is recorded): ``draw`` (``"module:function"``) is called with ``*args(), path``
        and writes it to a scratch folder kept until the record is written. No stage output
        depends on it, so the plotting code is imported then, by name (never by the stage
        module), and the settings it reads are no params dependency."""
        if self.enabled:
            self.figures.append((name, draw, args))

    def _draw_figures(self) -> None:
        for name, draw, args in self.figures:
            module, _, function = draw.partition(":")
            path = Path(self._scratch_dir(), name)
            with settings.paused():
                getattr(importlib.import_module(module), function)(*args(), path)
            self.log_artifact(path)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        """A JSON file for the record only."""
        if self.enabled:
            path = Path(self._scratch_dir(), name)
            path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            self.log_artifact(path)

    def _scratch_dir(self) -> str:
        self._scratch = self._scratch or tempfile.mkdtemp(prefix="diffpref-run-")
        return self._scratch


@contextmanager
def stage_run(
    stage: str,
    objective: str | None,
    params: dict[str, Any],
    params_hash: str,
    seed: int | None = None,
    inputs: dict[str, Path] | None = None,
    options: dict[str, Any] | None = None,
    rnd: int | None = None,
    variant: str | None = None,
) -> Iterator[StageRun]:
    """``options``: the ``tracking:`` params and ``pipeline_params_hash`` (the whole resolved
    params file's hash, tagged on the execution's parent run)."""
    # none with DIFFPREF_MLFLOW=0, and none but rank 0's when a stage runs as several
    # processes (one run per stage, whatever N)
    enabled = env.mlflow_enabled() and launch.is_main()
    items = [(k, str(v)) for k, v in (inputs or {}).items()]
    run = StageRun(stage, objective, params, params_hash, seed, items, enabled, rnd=rnd)
    run.variant = variant
    start, start_ms = time.perf_counter(), now_ms()
    writer = _start_writer(run, start_ms, options or {}) if enabled else None
    status = "FINISHED"
    try:
        yield run
        run._draw_figures()
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run.log_metric("wall_time_s", time.perf_counter() - start)
        try:
            if writer is not None:
                _finish_writer(writer, run, status)
        finally:
            if run._scratch:
                shutil.rmtree(run._scratch, ignore_errors=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def _start_writer(run: StageRun, start_ms: int, options: dict[str, Any]) -> subprocess.Popen:
    head = {
        "stage": run.stage,
        "objective": run.objective,
        "seed": run.seed,
        "round": run.rnd,
        "variant": run.variant,
        "params": flatten(run.params),
        "params_hash": run.params_hash,
        "start_ms": start_ms,
        "pipeline": pipeline_id(),
        "inputs": run.inputs,
        "options": options,
    }
    data = (json.dumps(head) + "\n").encode()
    # The run's identity is in the helper's pipe before the helper exists: once it runs, a
    # kill of the stage at any moment leaves it a run to record as KILLED (sent after it
    # started, a kill in between left a helper with an empty pipe, and no run at all). The
    # pipe grows to hold it (64 KiB by default, 1 MiB allowed); what still does not fit
    # follows once the helper reads.
    read_end, write_end = os.pipe()
    if len(data) > 1 << 16:
        with suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, len(data))
    os.set_blocking(write_end, False)
    try:
        sent = os.write(write_end, data)
    except BlockingIOError:
        sent = 0
    os.set_blocking(write_end, True)
    try:
        # its own session: a kill of the stage's process group (Ctrl-C, `kill -9 -PGID`)
        # leaves it to record the run as FAILED or KILLED
        writer = subprocess.Popen(
            [sys.executable, "-m", "diffpref.tracking"], stdin=read_end, start_new_session=True
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    while sent < len(data):
        sent += os.write(write_end, data[sent:])
    writer.stdin = open(write_end, "w")  # noqa: SIM115 (closed by _finish_writer)
    return writer


def _finish_writer(writer: subprocess.Popen, run: StageRun, status: str) -> None:
    """Hand the helper the results and wait for the record. A helper that failed outright (it
    spools the record itself when only the store fails) is a warning: the stage's outputs are
    written, and failing the stage would make DVC or Snakemake discard them."""
    tail = {
        "status": status,
        "end_ms": now_ms(),
        "metrics": run.metrics,
        "tags": run.tags,
        "artifacts": run.artifacts,
        "scratch": run._scratch,
    }
    assert writer.stdin is not None
    try:
        with writer.stdin:
            writer.stdin.write(json.dumps(tail) + "\n")
    except BrokenPipeError:  # the helper is gone: its exit code below says so
        pass
    writer.wait()
    if writer.returncode != 0:
        name = run_name(run.stage, run.objective, run.seed, run.variant)
        print(
            f"WARNING: the MLflow record of {name} was not written (its writer exited with "
            f"{writer.returncode}; see above)",
            file=sys.stderr,
        )
