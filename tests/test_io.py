"""Atomic outputs: a stage that fails leaves the previous artifact intact and no debris."""

from __future__ import annotations

import pytest

from diffpref.io import atomic_dir


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
