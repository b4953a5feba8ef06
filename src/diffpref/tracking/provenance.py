"""Where a run came from: the git commit, the pipeline execution it belongs to, and content
digests of the data it read."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from diffpref import env

DVC_TAGS = ("DVC_STAGE", "DVC_EXP_NAME")  # a stage's DVC environment, kept as run tags


def git_root() -> Path | None:
    out = git("rev-parse", "--show-toplevel")
    return Path(out) if out else None


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Params as MLflow logs them, ``a.b.c`` -> text; whole (the writer makes them fit MLflow,
    keeping the originals of what it cuts: :mod:`~diffpref.tracking.names`)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def pipeline_id() -> str | None:
    """Which pipeline execution a stage belongs to, so its run nests under that execution's
    parent run: ``DIFFPREF_PIPELINE_ID`` (the Snakefile sets one per ``snakemake`` invocation)
    or else the nearest ``dvc`` process above this one (its pid and start time, unique per
    ``dvc repro`` / ``dvc exp run``); None for a stage run by hand."""
    if key := env.pipeline_id():
        return key
    try:
        stat = _proc_stat(os.getpid())
        for _ in range(12):
            pid = int(stat[1])  # the parent
            if pid <= 1:
                return None
            stat = _proc_stat(pid)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            names = [Path(a.decode(errors="replace")).name for a in argv[:3]]
            if "dvc" in names[:2] or names[1:3] == ["-m", "dvc"]:
                return f"dvc-{pid}-{stat[19]}"  # field 22: the process's start time
    except (OSError, IndexError, ValueError):
        pass
    return None


def _proc_stat(pid: int) -> list[str]:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name, which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def digest(path: Path) -> str:
    """Content digest of a file or folder (relative names and bytes), 16 hex characters: equal
    digests, equal data, whichever machine or checkout produced it."""
    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]
