"""Reading the files a lookup shows: only regular files, and at most a size cap, whatever a path names.

An item's `path` metadata is data (written by whoever indexed it), so it may name /dev/zero (endless bytes), a
FIFO (an open that waits for a writer forever), a terminal or a directory. Such a path is reported, never read:
the file is checked with stat before it is opened, opened with O_NONBLOCK (a FIFO swapped in after the check cannot
block the open), checked again on the open descriptor (the same regular file), and read up to the cap."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

LOG = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 << 20  # a file larger than this is not read (a stray path must not exhaust memory)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


class UnreadableFile(Exception):
    """A file that is not read: `reason` says why, naming the path."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _what(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES, *, regular_only: bool = True) -> bytes:
    """The bytes of the file at `path`, at most `max_bytes` of them; UnreadableFile otherwise.

    `regular_only` (the default, for paths taken from data) refuses anything but a regular file before opening
    it. Without it (a path the user typed, e.g. a process substitution's pipe) other files are read too, still
    within `max_bytes`."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UnreadableFile(f"file not found: {p}") from None
    except OSError as e:
        raise UnreadableFile(f"unreadable: cannot stat {p}: {e.strerror or e}") from None
    regular = stat.S_ISREG(st.st_mode)
    if regular_only and not regular:
        raise UnreadableFile(f"unreadable: {p} is {_what(st.st_mode)}, not a regular file")
    if regular and st.st_size > max_bytes:
        raise UnreadableFile(f"unreadable: {p} is too large ({st.st_size:,} bytes, more than {max_bytes:,})")
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags | (os.O_NONBLOCK if regular_only else 0))
    except OSError as e:
        raise UnreadableFile(f"unreadable: cannot open {p}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fh:
        now = os.fstat(fd)
        if regular_only and (not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)):
            raise UnreadableFile(f"unreadable: {p} changed while it was opened (now {_what(now.st_mode)})")
        try:
            data = fh.read(max_bytes + 1)
        except OSError as e:
            raise UnreadableFile(f"unreadable: cannot read {p}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise UnreadableFile(f"unreadable: {p} is too large (more than {max_bytes:,} bytes)")
    return data
