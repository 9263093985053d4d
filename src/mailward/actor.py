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
        uid = os.getuid() if _invoker_uid is None else _invoker_uid
        user = _os_user(uid)
        sudo = os.environ.get("SUDO_USER", "") if uid == 0 else ""
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
        return cls(name=_os_user(os.getuid()), host=socket.gethostname(), origin="milter")


_invoker_uid: int | None = None  # the real user ID before the process changed it; None: never changed


def remember_invoker() -> None:
    """Keep who started the process for :meth:`Actor.current`, before the user IDs change.

    A root CLI becomes the service user before its command runs
    (``privileges.become_service_user``); the audit trail must still name the
    admin (and the sudo caller), not the account the CLI runs as.
    """
    global _invoker_uid
    if _invoker_uid is None:
        _invoker_uid = os.getuid()


def _os_user(uid: int) -> str:
    """The account of a real user ID (not $USER, which anyone can set)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
