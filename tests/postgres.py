"""A throw-away PostgreSQL server on 127.0.0.1, for the tests of MLflow's team-server mode.
Bounded: stopped, and its data removed, when the ``with`` block ends (or fails)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.daemon import free_port
from tests.project import sh


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").exists()]
    return max(found, key=lambda d: int(d.parent.name), default=None)


@contextmanager
def postgres(db: str = "mlflow") -> Iterator[str]:
    """A fresh cluster with database ``db``, fsync off; yields its libpq URI."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found; `bash workflow/scripts/install.sh "
            "--tests` installs Debian's postgresql"
        )
    # not under pytest's tmp_path: the server's user must reach its data and socket folder
    root = Path(tempfile.mkdtemp(prefix="diffpref-pg-"))
    as_user = []  # initdb and postgres refuse to run as root
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        sh([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
            "--auth=trust", "--no-sync"], root)  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        sh([*pg_ctl, "-w", "-l", str(root / "log"), "-o", options, "start"], root)
        try:
            sh([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                db], root)  # fmt: skip
            yield f"postgresql://postgres@127.0.0.1:{port}/{db}"
        finally:
            sh([*pg_ctl, "-m", "fast", "stop"], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
