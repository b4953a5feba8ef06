"""Atomic outputs: a stage that fails, is killed or fills the disk leaves the previous artifact
intact and no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from diffpref.io import MARKER, MARKER_TEXT, DiskFull, OutputInTheWay, atomic_dir


def previous_output(out: Path) -> Path:
    """``out`` as an earlier write left it: ``old.txt`` and diffpref's marker."""
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    return out


def names(folder: Path) -> list[str]:
    """The entries of a folder, less diffpref's marker."""
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER)


def test_success_replaces_the_folder(tmp_path):
    out = previous_output(tmp_path / "stage")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # invisible until complete
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "new.txt"])
    assert (out / MARKER).read_text() == MARKER_TEXT  # the same bytes in every output
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_interrupted_write_leaves_previous_output_and_no_temp(tmp_path):
    out = previous_output(tmp_path / "stage")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert names(out) == ["old.txt"]
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
    previous_output(tmp_path / f".stage.old-{pid}")
    running = tmp_path / f".stage.tmp-{os.getpid()}-x"  # a writer that is still at work
    running.mkdir()
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        assert names(out) == ["old.txt"]  # put back
        assert sorted(tmp_path.iterdir()) == sorted([out, running, tmp])  # the dead one's gone
        raise RuntimeError
    assert sorted(tmp_path.iterdir()) == [running, out]


def test_a_full_disk_names_the_output_and_keeps_the_previous_one(tmp_path):
    """A real ENOSPC from the kernel (/dev/full) while a stage writes: DiskFull naming the
    output, the previous output and no temp folder left."""
    out = previous_output(tmp_path / "stage")
    with pytest.raises(DiskFull) as e, atomic_dir(out) as tmp:
        (tmp / "part.txt").write_text("part")
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 4096)
            full.flush()
    assert str(e.value) == (
        f"{out}: not written: the disk is full ([Errno 28] No space left on device); the "
        f"partial output was removed and the previous {out} is unchanged"
    )
    assert names(out) == ["old.txt"]
    assert [f.name for f in tmp_path.iterdir()] == ["stage"]


def _users_folder(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("mine")


def _users_file(out: Path) -> None:
    out.parent.mkdir()
    out.write_text("mine")


def _link_to_an_output(out: Path) -> None:
    out.symlink_to(previous_output(out.with_name("elsewhere")))


def _file_for_its_folder(out: Path) -> None:
    out.parent.write_text("mine")  # where the output's folder would go


IN_THE_WAY = {  # what is at the output's path: what the error says it is
    "users_folder": (_users_folder, f"a folder diffpref did not write (it holds no {MARKER})"),
    "users_file": (_users_file, "a file"),
    "link": (_link_to_an_output, "a symbolic link (to {tmp}/elsewhere)"),
    "file_for_its_folder": (_file_for_its_folder, "a file"),
}


@pytest.mark.parametrize("case", IN_THE_WAY)
def test_what_diffpref_did_not_write_is_never_replaced(tmp_path, case):
    """A stage's output path holding a user's folder, a file, or a link (even to an output):
    an error naming the path and what is there, before the write starts; nothing deleted."""
    make, what = IN_THE_WAY[case]
    out = tmp_path / "parent" / "stage"
    make(out)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    started = False
    with pytest.raises(OutputInTheWay) as e, atomic_dir(out):
        started = True
    assert not started
    named = out.parent if case == "file_for_its_folder" else out
    assert str(e.value) == (
        f"{named}: not replaced: it is {what.format(tmp=out.parent)}; a stage replaces only a "
        "folder it wrote itself. Nothing was deleted: move it away (or delete it, if it is an "
        "old diffpref output written before output folders were marked), or set `results:` to "
        "another folder"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_users_folder_that_appears_during_the_write_is_not_replaced(tmp_path):
    """Checked again just before the rename: the new output is dropped, the folder kept."""
    out = tmp_path / "stage"
    with pytest.raises(OutputInTheWay), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        _users_folder(out)
    assert names(out) == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temp folder left


def test_an_empty_folder_is_replaced(tmp_path):
    """Nothing to lose: DVC and Snakemake empty ``results/plots`` (declared files) first."""
    out = tmp_path / "stage"
    out.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert names(out) == ["new.txt"] and (out / MARKER).is_file()
