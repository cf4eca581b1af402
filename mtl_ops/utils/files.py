"""Atomic file writes: the data goes to a temporary file beside the target and ``os.replace`` then puts it
under the real name, so a crash never leaves a truncated file there.

The temporary file is opened with mode 0o666 and the process umask applies, exactly as for ``open(path, "w")``
(0644 under the usual umask 022). ``tempfile.mkstemp`` would create it 0600, and ``os.replace`` keeps that
mode, which made finished outputs unreadable to other users.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace ``path`` with what ``write(file)`` writes into a binary file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
