"""Run the `mailward` CLI as the service user, so whatever it creates belongs to the milter.

An admin types ``sudo mailward ...`` beside a milter that runs as ``milter.user``.
Had the CLI stayed root, the directories and files it creates (model versions,
quarantine files, the rules cache, databases' journals) would be root's, mode
0700/0600, and the milter could no longer read them. So a root CLI becomes the
service user — ``milter.user`` if configured, else the owner of ``state_dir``
when that is not root — right after the configuration is loaded and before
anything touches state. It keeps the service user's own supplementary groups
(on Debian, ``adm`` may read /var/log/mail.log, which ``watch-auth`` follows)
and none of root's.

A command that needs root for something else (releasing with ``quarantine.hold``
runs ``postsuper``) keeps a way back: only the *effective* IDs change, so files
are still created as the service user, and a child process can become root again.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from .actor import remember_invoker
from .config import Settings
from .errors import MailwardError


class PrivilegeError(MailwardError):
    """The CLI cannot become the service user; it does nothing rather than create root-owned state."""


@dataclass(frozen=True)
class ServiceAccount:
    name: str
    uid: int
    gid: int
    in_passwd: bool = True  # an owner without a passwd entry has no groups of its own


def service_account(settings: Settings) -> ServiceAccount | None:
    """Whom a root CLI should run as; None when it is not root or the state belongs to root."""
    if os.geteuid() != 0:
        return None
    if settings.milter.user:
        try:
            entry = pwd.getpwnam(settings.milter.user)
        except KeyError:
            raise PrivilegeError(f"milter.user {settings.milter.user!r} does not exist") from None
        return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        st = os.stat(settings.state_dir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PrivilegeError(f"cannot inspect state_dir {settings.state_dir}: {exc.strerror}") from None
    if st.st_uid == 0:
        return None
    try:
        entry = pwd.getpwuid(st.st_uid)
        return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
    except KeyError:  # an owner without a passwd entry: its IDs are all we need
        return ServiceAccount(f"uid {st.st_uid}", st.st_uid, st.st_gid, in_passwd=False)


def become_service_user(settings: Settings, keep_root: bool = False) -> ServiceAccount | None:
    """Drop to the service account (if any); with ``keep_root`` only the effective IDs change."""
    account = service_account(settings)
    if account is None:
        return None
    remember_invoker()  # the audit trail names the admin, not the account we become
    state = Path(settings.state_dir)
    try:
        if not state.exists():  # a first CLI run before the milter's: create it as the milter would
            state.mkdir(mode=0o700, parents=True)
            os.chown(state, account.uid, account.gid)
        if account.in_passwd:
            os.initgroups(account.name, account.gid)
        else:
            os.setgroups([])
        if keep_root:
            os.setegid(account.gid)
            os.seteuid(account.uid)
        else:
            os.setgid(account.gid)
            os.setuid(account.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to the service user {account.name}: {exc.strerror}") from None
    return account


class RootArgs(TypedDict, total=False):
    """The ``user``/``group`` keyword arguments of :func:`subprocess.run`."""

    user: int
    group: int


def as_root() -> RootArgs:
    """``subprocess`` arguments that run a child as root again after :func:`become_service_user` kept the way back."""
    if os.getuid() == 0 and os.geteuid() != 0:
        return {"user": 0, "group": 0}  # setreuid/setregid back to the real IDs; no capability needed
    return {}
