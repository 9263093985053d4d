"""Who did something and from where: the subject of every audit record (quarantine, incidents, ledger)."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """Who did something and from where: the audit trail's subject."""

    name: str
    host: str
    origin: str = ""  # e.g. the SSH client address; empty for a local session or the milter

    @classmethod
    def current(cls, analyst: str = "") -> Actor:
        """The person at the keyboard: ``analyst`` if given, else the sudo caller, else the OS user.

        ``origin`` keeps whatever the name alone would hide: the SSH client,
        the sudo caller, the OS account behind a typed ``--analyst`` name.
        """
        user = _os_user()
        sudo = os.environ.get("SUDO_USER", "") if os.getuid() == 0 else ""
        ssh = (os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT") or "").split()
        notes = [f"ssh {ssh[0]}"] if ssh else []
        if sudo:
            notes.append(f"sudo by {sudo}")
        if analyst and analyst != user:
            notes.append(f"os user {user}")
        return cls(name=analyst or sudo or user, host=socket.gethostname(), origin="; ".join(notes))

    @classmethod
    def service(cls) -> Actor:
        """The daemon itself (the OS user it runs as), for the records it writes."""
        return cls(name=_os_user(), host=socket.gethostname(), origin="milter")


def _os_user() -> str:
    """The account of the real user ID (not $USER, which anyone can set)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"
