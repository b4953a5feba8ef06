"""Artifacts in and out: an interrupted stage never leaves a half-written output, and a damaged
input is named, with the command that restores it, before any work starts.

Every stage writes into a temporary sibling directory and renames it over the final path only
when everything is written, so downstream stages (and DVC/Snakemake) see all or nothing; the
rerun of a killed stage removes what the killed one left, and a full disk is named as such.
Each folder written so holds a marker file (:data:`MARKER`), and a stage replaces only a
folder that holds one (or an empty one): whatever else is in the way is the user's, and is
named in an error with nothing deleted (:func:`check_replaceable`).
Earlier stages' artifacts are read with :func:`read_table`, :func:`load_tensors`,
:func:`load_array` and :func:`read_json`, which name a damaged file and how to restore it;
pickled model files with :func:`load_weights` (``weights_only``: no code runs).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor


class InputError(ValueError):
    """Bad input, found before any work: a file the params point to, or an artifact that is
    missing, truncated or foreign. The CLI prints it and exits with code 2, like bad params."""


class DiskFull(OSError):
    """A stage output that did not fit (a full disk or quota, or a file over ``ulimit -f``): an
    environment fault, not bad input, so the CLI prints it and exits with code 1."""


class OutputInTheWay(InputError):
    """Something a stage did not write where its output goes (a user's folder, a file, a
    symbolic link): named, nothing deleted, exit code 2 like other bad input."""


# In every folder diffpref writes as a whole (stage outputs, checkpoints): the sign that a
# later run may replace it. Hidden, like Snakemake's `.snakemake_timestamp`; the same bytes
# everywhere, so outputs stay byte-identical across runs and DVC's cache keys do not move.
MARKER = ".diffpref-output"
MARKER_TEXT = (
    "Written by diffpref: a stage output, replaced whole by the stage's next run.\n"
    "A folder without this file is never replaced or deleted by diffpref.\n"
)


def is_own(folder: Path) -> bool:
    """A real folder (not a link to one) that diffpref wrote: it holds :data:`MARKER`."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file()


def mark(folder: Path) -> None:
    """Put :data:`MARKER` into ``folder``: diffpref wrote it and may replace it."""
    (Path(folder) / MARKER).write_text(MARKER_TEXT)


def check_replaceable(path: Path) -> None:
    """Raise :class:`OutputInTheWay` unless a stage may put its output folder at ``path``:
    nothing is there, or a folder diffpref wrote (:func:`is_own`), or an empty folder (which
    holds nothing to lose: DVC and Snakemake empty a folder of declared file outputs, such as
    ``results/plots``, before the stage runs). A file where one of its folders would go is in
    the way too."""
    path = Path(path)
    if (what := _obstacle(path)) is None:
        above = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
        if above is None or above.is_dir():
            return
        path, what = above, _obstacle(above)
    raise OutputInTheWay(
        f"{path}: not replaced: it is {what}; a stage replaces only a folder it wrote itself. "
        "Nothing was deleted: move it away (or delete it, if it is an old diffpref output "
        "written before output folders were marked), or set `results:` to another folder"
    )


def _obstacle(path: Path) -> str | None:
    """What at ``path`` a stage must not replace, in words; None if it may."""
    if path.is_symlink():
        return f"a symbolic link (to {os.readlink(path)})"
    if not path.exists() or is_own(path):
        return None
    if not path.is_dir():
        return "a file"
    if any(path.iterdir()):
        return f"a folder diffpref did not write (it holds no {MARKER})"
    return None


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory next to ``final``; on success it replaces ``final``, marked as
    diffpref's (:data:`MARKER`).

    Only a folder diffpref wrote is replaced (:func:`check_replaceable`, before the write and
    again before the rename); a failed write removes the temp directory (a full disk raises
    :class:`DiskFull` naming ``final``); what a killed writer left behind is cleaned up first
    (:func:`_clean_leftovers`).
    """
    final = Path(final)
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        mark(tmp)
        check_replaceable(final)  # whatever appeared there meanwhile
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if why := out_of_space(e):
            raise DiskFull(
                f"{final}: not written: {why} ({e}); the partial output was removed and the "
                f"previous {final} is unchanged"
            ) from e
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _clean_leftovers(final: Path) -> None:
    """A writer killed mid-write (``kill -9``, the OOM killer) leaves its temp folder, and one
    killed between the two renames leaves the previous output moved aside: remove the first,
    put the second back, unless the process that made them is still running."""
    leftover = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)(-.*)?")
    for path in final.parent.iterdir():
        m = leftover.fullmatch(path.name)
        if not m or _alive(int(m[2])):
            continue
        if m[1] == "old" and not final.exists():
            path.rename(final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


_NO_SPACE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file is over the file size limit (ulimit -f)",
}


def out_of_space(e: BaseException | None) -> str | None:
    """Why ``e`` (or an error it came from) is a write that did not fit, or None. Writers in C
    or Rust (pyarrow, safetensors) raise their own classes with the C library's message, so
    the message is matched as well as ``errno``."""
    while e is not None:
        for code, why in _NO_SPACE.items():
            if getattr(e, "errno", None) == code or os.strerror(code) in str(e):
                return why
        e = e.__cause__ or e.__context__
    return None


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(tmp, obj)
    tmp.replace(path)


def read_json(path: Path) -> Any:
    with decoding(Path(path), "JSON"):
        return json.loads(Path(path).read_text())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# The folders DVC and Snakemake track as one stage output each (dvc.yaml ``outs``).
_STAGE_DIRS = {"world", "prompts", "candidates", "rewards", "labels", "report"}
_SEED_DIR = re.compile(r"seed\d+")
_MODEL_DIR = re.compile(r"(round|matched)\d+")


def stage_output(path: Path) -> Path:
    """The stage output folder holding ``path``: ``results/<stage>`` (a later online round's
    ``results/online/<objective>/seed<N>/round<r>/<stage>``), or one model's folder
    ``results/{adapters,eval}/<objective>/seed<N>/<round or control>`` / ``results/eval/base``."""
    path = Path(path)
    for folder in path.parents:
        model = folder.parent.parent.parent.name in ("adapters", "eval")
        if model and _SEED_DIR.fullmatch(folder.parent.name) and _MODEL_DIR.fullmatch(folder.name):
            return folder
        if folder.name == "base" and folder.parent.name == "eval":
            return folder
        if folder.name in _STAGE_DIRS and folder.parent.name != "world":  # world/rewards/...
            return folder
    return path.parent


def artifact_error(path: Path, problem: str) -> InputError:
    """An error naming the artifact, what is wrong with it and how to get a good copy back."""
    out = stage_output(path)
    return InputError(
        f"{path}: {problem}. Rerun the stage that writes {out}: `dvc checkout --force {out}` "
        f"restores DVC's cached copy, `dvc repro` recomputes it; with Snakemake, "
        f"`snakemake --force {out}` (Snakemake does not notice a damaged output)"
    )


@contextmanager
def decoding(path: Path, kind: str, key: str | None = None) -> Iterator[None]:
    """Errors of a reader of ``path`` (parquet, safetensors, ...) become one :class:`InputError`
    naming the file: with the params ``key`` of a user's file, or how to restore an artifact."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as e:  # pyarrow's errors are both kinds
        problem = (
            "missing"
            if isinstance(e, FileNotFoundError)
            else f"unreadable: truncated, or not a {kind} file ({type(e).__name__}: {e})"
        )
        error = InputError(f"{key}: {path}: {problem}") if key else artifact_error(path, problem)
        raise error from None


def read_table(path: Path, required: list[str]) -> pd.DataFrame:
    """A parquet artifact, with the columns its reader needs; else an error naming the file."""
    path = Path(path)
    with decoding(path, "parquet"):
        df = pd.read_parquet(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise artifact_error(path, f"missing columns {missing} (has {list(df.columns)})")
    return df


def load_tensors(path: Path, key: str | None = None) -> dict[str, Tensor]:
    """A safetensors file as CPU tensors: a stage's artifact, or the user's file that the
    params ``key`` names; else an error naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    with decoding(path, "safetensors", key):
        return load_file(path)


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` artifact, memory-mapped (images are read as they are used); no pickles."""
    import numpy as np

    path = Path(path)
    with decoding(path, "npy"):
        return np.load(path, mmap_mode="r")


def load_weights(
    path: Path, key: str, allow: Sequence[type] = (), fix: str = "convert it to .safetensors"
) -> Any:
    """A pickled torch file (``.pt``/``.pth``/``.bin``) loaded with ``weights_only=True``:
    tensors, plain containers and the ``allow``-ed classes only, so a pickle carrying code is
    refused before any of it runs. ``key`` is the params key or role that names the file."""
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{key}: {path}: no such file") from None
    except pickle.UnpicklingError as e:
        why = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not|\n|$)", str(e))
        raise InputError(
            f"{key}: {path}: refused: it holds pickled objects besides tensors, which could run "
            f"code when loaded ({why.group(1) if why else e}); {fix}"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise InputError(f"{key}: {path}: not a readable torch file ({e})") from None
