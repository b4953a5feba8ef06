"""Atomic outputs: a stage that fails, is killed or fills the disk leaves the previous artifact
intact and no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from diffpref.io import DiskFull, atomic_dir


def test_success_replaces_the_folder(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # invisible until complete
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_interrupted_write_leaves_previous_output_and_no_temp(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_interrupted_first_write_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "x").write_text("x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_leftovers_are_removed_or_put_back_by_the_next_write(tmp_path):
    """`kill -9` inside ``atomic_dir`` leaves the temp folder (nothing runs after SIGKILL); a
    writer killed between its two renames leaves the previous output moved aside. The next
    write removes the first and puts the second back before it starts."""
    out = tmp_path / "stage"
    code = (
        "import os, signal, sys\n"
        "from diffpref.io import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half.txt').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(out)])
    assert p.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".stage.tmp-") and (left / "half.txt").is_file()
    pid = int(left.name.split("-")[1])  # .stage.tmp-<pid>-<random>
    # killed between the renames, it would also have left the previous output moved aside
    moved = tmp_path / f".stage.old-{pid}"
    moved.mkdir()
    (moved / "old.txt").write_text("old")
    running = tmp_path / f".stage.tmp-{os.getpid()}-x"  # a writer that is still at work
    running.mkdir()
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        assert [f.name for f in out.iterdir()] == ["old.txt"]  # put back
        assert sorted(tmp_path.iterdir()) == sorted([out, running, tmp])  # the dead one's gone
        raise RuntimeError
    assert sorted(tmp_path.iterdir()) == [running, out]


def test_a_full_disk_names_the_output_and_keeps_the_previous_one(tmp_path):
    """A real ENOSPC from the kernel (/dev/full) while a stage writes: DiskFull naming the
    output, the previous output and no temp folder left."""
    out = tmp_path / "stage"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(DiskFull) as e, atomic_dir(out) as tmp:
        (tmp / "part.txt").write_text("part")
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 4096)
            full.flush()
    assert str(e.value) == (
        f"{out}: not written: the disk is full ([Errno 28] No space left on device); the "
        f"partial output was removed and the previous {out} is unchanged"
    )
    assert [f.name for f in out.iterdir()] == ["old.txt"]
    assert [f.name for f in tmp_path.iterdir()] == ["stage"]
