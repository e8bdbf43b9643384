"""Writing files so that a crash never leaves half of one: a temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_all"]


def _write_temp(path: Path, write: Callable[[Any], None]) -> Path:
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(binary_handle)``: the old file or the new one, never half.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    os.replace(_write_temp(path, write), path)
    return path


def atomic_write_all(paths: Mapping[Path, Callable[[Any], None]]) -> list[Path]:
    """Write every file to a temporary name first, then rename them all: no partial set.

    If any writer fails, nothing is renamed and every temporary file is removed.
    """
    temps: dict[Path, Path] = {}
    try:
        for path, write in paths.items():
            temps[path] = _write_temp(Path(path), write)
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for path, tmp in temps.items():
        os.replace(tmp, path)
    return list(temps)
