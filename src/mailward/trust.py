"""Which state files Mailward may load: owned by root or the service user, writable by nobody else.

A checksum next to a file proves it was not damaged, not who wrote it: whoever
can write the directory can write a matching checksum too. So every file
whose content steers scanning (compiled YARA rules, spam models) is loaded
only when it, and the directories it is reached through, belong to root or
the service user and no group or other user can write them. Files shipped in
the package are not checked: whoever can write them can write the code too.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError


@dataclass(frozen=True)
class TrustedOwners:
    """The users whose files Mailward loads: root, this process, and the configured service user."""

    uids: frozenset[int]

    @classmethod
    def of(cls, service_user: str = "") -> TrustedOwners:
        """``service_user`` is ``milter.user``: a root milter writes state as root, then as that user."""
        uids = {0, os.geteuid()}
        if service_user:
            try:
                uids.add(pwd.getpwnam(service_user).pw_uid)
            except KeyError:
                pass  # an unknown user owns no file; the milter refuses to start with it anyway
        return cls(frozenset(uids))

    def problem(self, path: Path) -> str | None:
        """Why ``path`` (followed through symlinks) must not be loaded, or None if it may be."""
        try:
            st = os.stat(path)
        except OSError as exc:
            return f"cannot stat: {exc.strerror}"
        if st.st_uid not in self.uids:
            return f"owned by uid {st.st_uid}, not by root or the service user"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        return None

    def trusts(self, path: Path) -> bool:
        return self.problem(path) is None

    def require(self, path: Path, root: Path | None = None) -> None:
        """Raise :class:`ArtifactError` unless ``path`` and every directory from ``root`` down to it
        are trusted (``root`` None: the file and the directory it lies in)."""
        real = Path(os.path.realpath(path))
        top = Path(os.path.realpath(root)) if root is not None else real.parent
        chain = [real] + [d for d in real.parents if d == top or top in d.parents]
        for checked in chain:
            reason = self.problem(checked)
            if reason is not None:
                raise ArtifactError(
                    f"{checked}: {reason}; refusing to load {path.name} "
                    f"(chown it to root or the service user, chmod go-w)"
                )
