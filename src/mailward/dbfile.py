"""SQLite database files that several processes share: created private, never opened beside SQLite.

Why this exists: POSIX record locks belong to a (process, file) pair, and
closing *any* descriptor of a file drops all of the process's locks on it.
SQLite keeps a shared lock on a WAL database for as long as a connection is
open; it is how another process's last connection learns that it is not the
last one and must not checkpoint and unlink ``-wal``/``-shm``. So a process
with live connections must never ``open``+``close`` the database file
itself — not even to create or chmod it on a reload. This module creates the
file once, private from the first byte, without any descriptor of the final
name, and otherwise works on the path only. It also holds the file-system steps the
other private state files share (handing root's files to the service user, a
directory's fsync).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def prepare_database_file(path: Path) -> Path:
    """Make ``path`` exist as a 0600 file owned like its directory; OSError if impossible.

    A new file is made under a temporary name, its descriptor closed, and then
    hard-linked to ``path`` (``link`` refuses to replace a file another
    process created meanwhile), so no descriptor of the live database is ever
    opened here. An existing file is tightened by path (``chmod``).
    """
    path = Path(path)
    if not path.exists():
        create_private_file(path)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)  # SQLite gives -wal and -shm the database file's mode
    hand_to_directory_owner(path)
    return path


def create_private_file(path: Path, content: bytes = b"") -> None:
    """Make ``path`` appear whole with ``content``, mode 0600 and owned like its directory, unless it exists.

    Written under a temporary name, its descriptor closed, then hard-linked into place: no
    process ever sees it half written or holds a descriptor of the final name from here, and
    ``link`` refuses to replace what another process made meanwhile (theirs stands).
    """
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".new-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as staged:
            if content:
                staged.write(content)
                staged.flush()
                os.fsync(staged.fileno())
        hand_to_directory_owner(Path(tmp))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        if content:
            fsync_directory(path.parent)
    finally:
        os.unlink(tmp)


def hand_to_directory_owner(path: Path) -> None:
    """Give what root just created to the owner of its directory (the service user), by path.

    An administrator running the CLI as root must not leave root-owned state
    the milter then cannot open; SQLite gives -wal and -shm the database
    file's owner.
    """
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if parent.st_uid != 0 and path.stat().st_uid == 0:
        os.chown(path, parent.st_uid, parent.st_gid)


def fsync_directory(path: Path) -> None:
    """Make the names just linked, renamed or removed in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
