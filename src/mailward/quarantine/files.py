"""Message bytes as one private file per message, written so a crash never leaves half a message.

Each message goes to a temporary file in the same directory, is fsync'd,
hard-linked to its final name (``link`` refuses to overwrite, unlike
``rename``, so two writers of one ID cannot clobber each other) and the
directory is fsync'd, so the name survives a power cut too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..dbfile import fsync_directory, hand_to_directory_owner
from ..errors import StoreError
from ..source import HEAD_BYTES, MessageSource

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_SUFFIX = ".eml"


@dataclass(frozen=True)
class Written:
    """What was measured while writing: size, digest and the first bytes (for the headers)."""

    size: int
    sha256: str
    head: bytes


def adopt(path: Path) -> None:
    """Give what root just created to the owner of its directory (the service user).

    An administrator running the CLI as root before the milter ever ran must
    not leave root-owned state behind that the milter then cannot open.
    """
    try:
        hand_to_directory_owner(path)
    except OSError as exc:
        raise StoreError(f"cannot hand {path} to the service user: {exc.strerror}") from exc


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or tighten an existing one; StoreError if that is impossible."""
    try:
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise StoreError(f"cannot prepare private directory {path}: {exc.strerror}") from exc
    adopt(path)
    return path


def measure(parts: Iterable[bytes], sink: BinaryIO | None = None) -> Written:
    """Hash and size ``parts`` (copying them to ``sink`` if given), keeping the first bytes."""
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    for chunk in parts:
        if sink is not None:
            sink.write(chunk)
        digest.update(chunk)
        size += len(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
    return Written(size, digest.hexdigest(), bytes(head))


class MessageFiles:
    """The ``messages/`` directory of a quarantine: one ``<id>.eml`` file (0600) per message."""

    def __init__(self, directory: Path):
        self.directory = ensure_private_dir(directory)

    def path(self, quarantine_id: str) -> Path:
        return self.directory / f"{quarantine_id}{_SUFFIX}"

    def write(self, quarantine_id: str, raw: MessageSource, sync_directory: bool = True) -> Written:
        """The bytes fsync'd under their final name; ``sync_directory=False`` leaves the directory's
        fsync (that makes the name durable) to the caller, who may share one among several writes."""
        final = self.path(quarantine_id)
        tmp = ""
        linked = False
        try:
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.directory)  # mkstemp: mode 0600
            with os.fdopen(fd, "wb") as out:
                written = measure(raw.chunks(), out)
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, final)
            linked = True
            os.unlink(tmp)
            tmp = ""
            if sync_directory:
                fsync_directory(self.directory)
            return written
        except OSError as exc:
            if linked:
                _discard(final)
            raise StoreError(f"cannot write quarantined message {quarantine_id}: {exc.strerror or exc}") from exc
        finally:
            if tmp:
                _discard(Path(tmp))  # never masks the error above

    def read(self, quarantine_id: str) -> bytes:
        try:
            return self.path(quarantine_id).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read quarantined message {quarantine_id}: {exc.strerror}") from exc

    def remove(self, quarantine_id: str) -> None:
        """OSError if the file stays (the caller logs it; the sweep retries)."""
        _unlink_quietly(self.path(quarantine_id))

    def sweep(self, is_known: Callable[[str], bool], older_than: float, now: float | None = None) -> int:
        """Remove temp files and files without a record (``is_known(id)`` false) older than ``older_than`` s.

        Such files are what a crash between writing the bytes and committing
        the row leaves behind; the age guard keeps a put in flight safe.
        """
        cutoff = (time.time() if now is None else now) - older_than
        removed = 0
        for entry in os.scandir(self.directory):
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            name = entry.name
            orphan = name.startswith(_TMP_PREFIX) or (name.endswith(_SUFFIX) and not is_known(name[: -len(_SUFFIX)]))
            if orphan and _discard(Path(entry.path)):
                removed += 1
        return removed


def _discard(path: Path) -> bool:
    """Remove a leftover; if that fails, say so in the log (the sweep retries) instead of raising."""
    try:
        _unlink_quietly(path)
        return True
    except OSError as exc:
        log.warning("cannot remove %s; left for the quarantine sweep: %s", path, exc.strerror or exc)
        return False


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
