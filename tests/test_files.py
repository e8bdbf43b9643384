"""Atomic writes: the old file or the new one, never half of one, and no temporary left over."""

import pytest

from jaxjac._files import atomic_write, atomic_write_all


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    atomic_write(path, lambda h: h.write(b"new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_set_is_written_whole_or_not_at_all(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"

    def fail(handle):
        raise OSError("no")

    with pytest.raises(OSError, match="no"):
        atomic_write_all({a: lambda h: h.write(b"1"), b: fail})
    assert list(tmp_path.iterdir()) == []
    assert atomic_write_all({a: lambda h: h.write(b"1"), b: lambda h: h.write(b"2")}) == [a, b]
    assert (a.read_text(), b.read_text()) == ("1", "2")
