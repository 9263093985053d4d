"""`mailward-milter`: start the milter process (milter/service.py has the process itself).

This module imports little on purpose: the scanning processes (forkserver, rules, model) take
most of a start, so they start loading before this process imports libmilter, the stores and
the rest, and both happen at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import logging
import os
import pwd
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import Settings, load_settings, parse_milter_socket
from ..errors import ConfigError, MailwardError
from ..logs import LOG_FILE_MODE, LogFileError, configure_cli_logging, configure_logging
from ..workers import ScanPool

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("mailward.milter")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailward-milter", description="Run the Mailward milter.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--state-dir", help="override state_dir (quarantine, models, rules cache)")
    parser.add_argument("--socket", help="override milter.socket, e.g. unix:/var/spool/postfix/mailward/milter.sock")
    parser.add_argument(
        "--check",
        action="store_true",
        help="dry run of a start: validate the configuration, compile every rule file, load the "
        "model and open the stores, print each problem, exit non-zero on any",
    )
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.state_dir:
        out["state_dir"] = args.state_dir
    if args.socket:
        out["milter"] = {"socket": args.socket}
    return out


def _prepare_directories(settings: Settings) -> None:
    """State private to the service user; the socket directory enterable by the MTA's group.

    Only directories of Mailward's own are made so: a state directory anyone may write to
    (like /tmp) is refused, and a shared socket directory (/run, /tmp) is left as it is.
    """
    service = pwd.getpwnam(settings.milter.user) if settings.milter.user and os.geteuid() == 0 else None
    state = Path(settings.state_dir)
    if problem := _state_dir_problem(settings):
        raise MailwardError(problem)
    for path in (state, state / "spool"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if service:
            os.chown(path, service.pw_uid, service.pw_gid)
    if service and settings.logging.file:
        _hand_log_file(Path(settings.logging.file), service)
    kind, socket_path, _port = parse_milter_socket(settings.milter.socket)
    if kind == "unix":
        sock_dir = Path(socket_path).parent
        if sock_dir.is_dir() and (_shared(sock_dir) or {p.name for p in sock_dir.iterdir()} - {Path(socket_path).name}):
            log.warning("socket directory %s is not the milter's own: its owner and mode are left", sock_dir)
            return
        sock_dir.mkdir(parents=True, exist_ok=True)
        try:
            gid = grp.getgrnam(settings.milter.socket_group).gr_gid
        except KeyError:
            gid = -1
        if os.geteuid() == 0:
            os.chown(sock_dir, service.pw_uid if service else 0, gid)
        # setgid: the socket inherits the MTA's group; with umask 007 that group may connect.
        # Left alone when already right (tmpfiles.d made it): a chmod by a service user outside
        # that group would clear the set-group-ID bit.
        wanted = 0o2750 if gid != -1 else 0o755
        if stat.S_IMODE(sock_dir.stat().st_mode) != wanted:
            os.chmod(sock_dir, wanted)


def _shared(directory: Path) -> bool:
    """Writable by everyone, or sticky: a system directory such as /tmp, never Mailward's to chmod."""
    mode = directory.stat().st_mode
    return bool(mode & (stat.S_IWOTH | stat.S_ISVTX))


def _state_dir_problem(settings: Settings) -> str:
    state = Path(settings.state_dir)
    if state.is_dir() and _shared(state):
        return f"state_dir {state} is writable by everyone: give Mailward a directory of its own"
    return ""


def _log_file_problem(settings: Settings) -> str:
    """What would stop a start from opening the log file ("" if nothing), found without creating it."""
    path = Path(settings.logging.file)
    if settings.logging.file and (target := _unwritable(path)) is not None:
        return f"logging.file {path}: {target} is not writable by this user"
    return ""


def _state_dir_missing_problem(settings: Settings) -> str:
    """What would stop a start from creating the missing state directory ("" if nothing)."""
    state = Path(settings.state_dir)
    if (parent := _unwritable(state)) is not None:
        return f"state_dir {state} does not exist and {parent} is not writable by this user"
    return ""


def _unwritable(path: Path) -> Path | None:
    """``path``, or the nearest directory above it that exists, when this user cannot write it; None
    when it can, or is root (a start as root creates what it needs and hands it over)."""
    if os.geteuid() == 0:
        return None
    target = path if path.exists() else next(p for p in path.absolute().parents if p.exists())
    return None if os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)) else target


def _hand_log_file(path: Path, service: pwd.struct_passwd) -> None:
    """Give the log file to the service user: the scanning processes, started after the drop,
    open it by name, and so does the reopen after logrotate; a root-owned file would stop them."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        os.fchown(fd, service.pw_uid, service.pw_gid)
    finally:
        os.close(fd)


def _drop_privileges(settings: Settings) -> None:
    if not settings.milter.user or os.geteuid() != 0:
        return
    service = pwd.getpwnam(settings.milter.user)
    # Its own groups (as systemd's User= gives them), none of root's: adm may read the mail log to follow.
    os.initgroups(service.pw_name, service.pw_gid)
    os.setgid(service.pw_gid)
    os.setuid(service.pw_uid)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"mailward-milter: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return _check(settings)
    try:
        configure_logging(settings.logging)
    except LogFileError as exc:
        print(f"mailward-milter: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        _prepare_directories(settings)
        _drop_privileges(settings)
        daemon = _start(args, settings)
    except (MailwardError, OSError, KeyError) as exc:
        log.error("cannot start: %s", exc)
        print(f"mailward-milter: cannot start: {exc}", file=sys.stderr)
        return 1
    return daemon.serve()


def _check(settings: Settings) -> int:
    """``--check``, a dry run: it changes no directory and creates no log file (lines go to stderr).

    A state directory a start would create (the first check, before the first start) is stood in
    for by a private temporary one, owned as the start would own it: the stores, key and rules
    cache are checked there, then removed.
    """
    configure_cli_logging(dataclasses.replace(settings.logging, file=""))
    problems = [p for p in (_state_dir_problem(settings), _log_file_problem(settings)) if p]
    stand_in = None
    try:
        if not Path(settings.state_dir).exists():
            problems += [p for p in (_state_dir_missing_problem(settings),) if p]
            stand_in = _stand_in_state(settings)
        _drop_privileges(settings)
        from .service import report_check

        return report_check(settings, problems, str(stand_in or ""))
    except (MailwardError, OSError, KeyError, ImportError) as exc:
        print(f"mailward-milter: cannot check: {exc}", file=sys.stderr)
        return 1
    finally:
        if stand_in is not None:
            shutil.rmtree(stand_in, ignore_errors=True)


def _stand_in_state(settings: Settings) -> Path:
    """A private, empty state directory owned as a start would own the real one."""
    stand_in = Path(tempfile.mkdtemp(prefix="mailward-check-"))
    if settings.milter.user and os.geteuid() == 0:
        service = pwd.getpwnam(settings.milter.user)
        os.chown(stand_in, service.pw_uid, service.pw_gid)
    return stand_in


def _start(args: argparse.Namespace, settings: Settings) -> Daemon:
    """The scanning processes start loading first (forkserver imports, rules, model: most of a
    start), then this process imports the milter and opens its stores while they load."""
    workers = settings.milter.workers
    pool = ScanPool(settings, workers, wait=False) if workers else None
    try:
        from .service import Daemon, remove_orphaned_spool

        remove_orphaned_spool(settings)
        return Daemon(args, settings, _overrides(args), pool)
    except BaseException:
        if pool is not None:
            pool.close()
        raise


if __name__ == "__main__":
    sys.exit(main())
