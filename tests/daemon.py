"""Test daemons on 127.0.0.1 (``mlflow server``, a local S3 server): started on a free port,
waited for until they answer, and stopped with their whole process group when the ``with``
block ends, passed or failed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def daemon(
    cmd: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 90
) -> Iterator[None]:
    """Run ``cmd`` until the block ends; ready when a GET of ``ready_url`` succeeds."""
    # its log goes to a file, not a pipe that a long-running daemon would fill and block on
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its children (uvicorn workers) stop with it
        )
        try:
            deadline = time.monotonic() + timeout
            while not _answers(ready_url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{' '.join(cmd)} did not start:\n{log.read()}")
                time.sleep(0.3)
            yield
        finally:
            _stop(proc)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:  # refused, or an HTTP error while it starts
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group (SIGKILL after 20 s); gone already is fine."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
