"""`mailward-milter`: the long-running milter process.

libmilter's own signal thread stops the milter on SIGHUP, so libmilter runs in
a side thread and the main thread keeps SIGHUP and SIGTERM for itself (Linux
delivers a process signal to the main thread when it does not block it): on
SIGHUP the configuration, rules and model are rebuilt and validated, and only
then swapped in; connections in progress finish on what they started with.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import logging
import os
import pwd
import signal
import sys
import threading
import time
from pathlib import Path

import Milter

from ..config import Settings, load_settings
from ..errors import ConfigError, MailwardError
from ..incidents import open_incidents
from ..incidents.authlog import LogFollower, watch
from ..logs import configure_logging
from ..metrics import Metrics, quarantine_stats, rules_version
from ..pipeline import Inspector
from ..reputation import authserv_id
from ..signatures.ruleset import discover, stamp
from ..screening import Screener
from ..workers import ScanPool
from .adapter import MailwardMilter, Runtime

log = logging.getLogger("mailward.milter")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailward-milter", description="Run the Mailward milter.")
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--state-dir", help="override state_dir (quarantine, models, rules cache)")
    parser.add_argument("--socket", help="override milter.socket, e.g. unix:/run/mailward/milter.sock")
    parser.add_argument("--check", action="store_true", help="validate the configuration, rules and model, then exit")
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if args.state_dir:
        out["state_dir"] = args.state_dir
    if args.socket:
        out["milter"] = {"socket": args.socket}
    return out


def _prepare_directories(settings: Settings) -> None:
    """State private to the service user; the socket directory enterable by the MTA's group."""
    service = pwd.getpwnam(settings.milter.user) if settings.milter.user and os.geteuid() == 0 else None
    for path in (Path(settings.state_dir), Path(settings.state_dir) / "spool"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if service:
            os.chown(path, service.pw_uid, service.pw_gid)
    sock = settings.milter.socket
    if sock.startswith(("unix:", "local:")):
        sock_dir = Path(sock.split(":", 1)[1]).parent
        sock_dir.mkdir(parents=True, exist_ok=True)
        try:
            gid = grp.getgrnam(settings.milter.socket_group).gr_gid
        except KeyError:
            gid = -1
        if os.geteuid() == 0:
            os.chown(sock_dir, service.pw_uid if service else 0, gid)
        # setgid: the socket inherits the MTA's group; with umask 007 that group may connect.
        os.chmod(sock_dir, 0o2750 if gid != -1 else 0o755)


def _drop_privileges(settings: Settings) -> None:
    if not settings.milter.user or os.geteuid() != 0:
        return
    service = pwd.getpwnam(settings.milter.user)
    os.setgroups([])
    os.setgid(service.pw_gid)
    os.setuid(service.pw_uid)


def _build_runtime(settings: Settings, pool: ScanPool | None, inspector: Inspector, metrics: Metrics) -> Runtime:
    from ..quarantine import open_store
    from ..quarantine.release import ReleaseVerifier

    deadline = settings.milter.message_deadline
    if pool is not None:
        scan = lambda source, envelope: pool.scan(source, envelope, deadline)  # noqa: E731
    else:
        scan = lambda source, envelope: inspector.inspect(  # noqa: E731
            source.read_bytes() if isinstance(source, Path) else source, envelope)
    incidents = open_incidents(settings, metrics)
    store = open_store(settings)
    screener = Screener(settings, scan, store, watch=incidents,
                        release=ReleaseVerifier.from_settings(settings, store).accept)
    metrics.watch("quarantine", quarantine_stats(settings))
    metrics.watch("blocks", incidents.blocklist.counts)
    metrics.set_rules_version(rules_version(settings))
    return Runtime(screener, settings.direction.rules(), Path(settings.state_dir) / "spool",
                   settings.milter.spool_threshold, incidents, metrics, authserv_id(settings.reputation))


RULES_POLL = 5.0     # seconds between checks of the rule directories for edits


@dataclasses.dataclass(frozen=True)
class _RulesOnDisk:
    """Where the live rules came from, and the (path, mtime, size) marker of those files."""

    directories: tuple = ()
    marker: tuple = ()


def _rules_on_disk(inspector: Inspector) -> _RulesOnDisk:
    for detector in inspector.detectors:
        ruleset = getattr(detector, "ruleset", None)
        if ruleset is not None:
            return _rules_on_disk_now(_RulesOnDisk(tuple(ruleset.directories)))
    return _RulesOnDisk()


def _rules_on_disk_now(seen: _RulesOnDisk) -> _RulesOnDisk:
    try:
        return _RulesOnDisk(seen.directories, stamp(discover(list(seen.directories))))
    except MailwardError:           # a directory vanished: that is a change too
        return _RulesOnDisk(seen.directories, ("unreadable",))


class _Daemon:
    """Holds the live runtime; new connections take whatever is current."""

    def __init__(self, args: argparse.Namespace, settings: Settings, inspector: Inspector):
        self.args = args
        self.settings = settings
        self.pool = ScanPool(settings, settings.milter.workers) if settings.milter.workers else None
        self.metrics = Metrics()             # kept across reloads: counters never reset while running
        self.runtime = _build_runtime(settings, self.pool, inspector, self.metrics)
        self.rules_seen = _rules_on_disk(inspector)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.metrics_server = self.metrics.serve(settings.metrics.listen, settings.source) \
            if settings.metrics.listen else None

    def connection(self) -> MailwardMilter:
        return MailwardMilter(self.runtime)

    def reload(self) -> None:
        try:
            settings = load_settings(self.args.config, _overrides(self.args))
            inspector = Inspector.from_settings(settings)   # a broken rule file or model fails here, not live
        except (MailwardError, OSError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        except Exception:
            log.exception("reload refused, keeping the running configuration")
            return
        if settings.milter.socket != self.settings.milter.socket:
            log.warning("milter.socket changed; the new socket takes effect only after a restart")
        for key in ("metrics.listen", "incidents.follow_auth_log", "incidents.auth_log"):
            section, name = key.split(".")
            if getattr(getattr(settings, section), name) != getattr(getattr(self.settings, section), name):
                log.warning("%s changed; it takes effect only after a restart", key)
        try:
            runtime = _build_runtime(settings, self.pool, inspector, self.metrics)
        except (MailwardError, OSError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if self.pool is not None:
            self.pool.reload(settings)
        self.rules_seen = _rules_on_disk(inspector)
        old, self.runtime = self.runtime, runtime
        old.incidents.close()        # a connection still using it reopens what it needs
        self.settings = settings
        configure_logging(settings.logging)
        log.info("configuration, rules and model reloaded from %s", settings.source)

    def serve(self) -> int:
        Milter.factory = self.connection
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE)
        os.umask(0o007)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                Milter.runmilter("mailward", self.settings.milter.socket, self.settings.milter.timeout)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)
            finally:
                self.stop_requested.set()

        signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        thread = threading.Thread(target=run, name="libmilter", daemon=True)
        thread.start()
        log.info("mailward-milter listening on %s", self.settings.milter.socket)
        if self.settings.incidents.follow_auth_log:
            follower = LogFollower(self.settings.incidents.auth_log)
            threading.Thread(target=watch, name="auth-log", daemon=True,
                             args=(follower, lambda address: self.runtime.incidents.failed_login(address),
                                   self.stop_requested)).start()
        next_rules_check = time.monotonic() + RULES_POLL
        while not self.stop_requested.wait(0.2):
            if time.monotonic() >= next_rules_check:
                next_rules_check = time.monotonic() + RULES_POLL
                on_disk = _rules_on_disk_now(self.rules_seen)
                if on_disk != self.rules_seen:
                    log.info("rule files changed on disk; reloading")
                    self.rules_seen = on_disk       # a refused reload is not retried until the next edit
                    self.reload_requested.set()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
        if thread.is_alive():
            Milter.stop()
        thread.join(timeout=15)
        if self.pool is not None:
            self.pool.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.runtime.incidents.close()
        if failure:
            log.error("the milter could not run: %s", failure[0])
            return 1
        log.info("mailward-milter stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"mailward-milter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    try:
        _prepare_directories(settings)
        _drop_privileges(settings)
        inspector = Inspector.from_settings(settings)
        daemon = None if args.check else _Daemon(args, settings, inspector)
    except (MailwardError, OSError, KeyError) as exc:
        log.error("cannot start: %s", exc)
        print(f"mailward-milter: cannot start: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print(f"mailward-milter: configuration {settings.source} is valid; "
              f"{len(inspector.detectors)} detectors loaded")
        return 0
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
