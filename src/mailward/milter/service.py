"""The long-running milter process, once `mailward-milter` (milter/daemon.py) has started it.

libmilter's own signal thread stops the milter on SIGHUP, so libmilter runs in
a side thread and this process's own threads take the signals (milter/signals.py:
SIGUSR1 or SIGHUP reloads; once libmilter runs, the main thread only waits). On a
reload the configuration, rules and model are rebuilt and validated, in a thread
of its own, and only then swapped in; messages in progress finish on what they
started with, and the old runtime's stores close when the last of them ends.

When workers scan, this process never builds a scanning stack (rules, model):
the pool's next generation loads them, and a reload whose workers cannot load
keeps the old ones. Reload signals arriving during a reload fold into one more reload,
and after a reload that loaded new workers the next one waits as long as that took.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import Milter

from ..config import Settings, load_settings, parse_milter_socket
from ..envelope import Envelope
from ..errors import MailwardError, ScanFailed
from ..evidence import Evidence
from ..incidents.authlog import LogFollower, watch
from ..logs import install_log_handler, log_handler
from ..metrics import Metrics
from ..reputation.resolver import DnsClient
from ..runtime import InProcessScanner, LiveRuntime, Runtime, build_runtime
from ..screening import Scanner
from ..signatures import rule_directories, rules_version
from ..signatures.clamav import clamd_version
from ..signatures.ruleset import Marker, Source, compile_file, discover, marker, stamp
from ..source import MessageSource
from ..workers import ScanPool
from .adapter import MailwardMilter, TcpMailwardMilter
from .buffer import SPOOL_PREFIX, SPOOL_SUFFIX
from .signals import Signals, keep_signals_from_this_thread
from .tcp import set_nodelay

log = logging.getLogger("mailward.milter")


def _observe(metrics: Metrics, settings: Settings, runtime: Runtime) -> None:
    """Point the scrape-time gauges at the runtime now live (never at one that may be refused)."""
    if runtime.quarantine is not None:
        metrics.watch("quarantine", runtime.quarantine.stats)
    metrics.watch("blocks", runtime.kept_incidents().blocklist.counts)
    try:
        metrics.set_rules_version(rules_version(settings))
    except (MailwardError, OSError) as exc:  # the rules check reports it; the metric says so
        log.warning("cannot fingerprint the rule files: %s", exc)
        metrics.set_rules_version("unreadable")


class _NotScanning:
    """The scanner of a runtime that ``--check`` only opens and closes, when no scanner could load."""

    def scan(self, source: MessageSource, envelope: Envelope) -> Evidence:
        raise ScanFailed("no scanning stack could be loaded")


_NOT_SCANNING = _NotScanning()


def _check_start(settings: Settings) -> list[str]:
    """Everything a start would load, loaded fresh; one line per problem (empty: a start would work).

    Every rule file is compiled from source (the bundle cache would hide a
    broken file that is already known), then the scanning stack (model,
    hash lists) and the runtime (stores, alert channels) are built and closed.
    """
    problems: list[str] = []
    try:
        for source in discover(rule_directories(settings)):
            rule_file, _ = compile_file(source)
            problems += [f"rule file {rule_file.path} does not compile: {error}" for error in rule_file.errors]
    except MailwardError as exc:
        problems.append(str(exc))
    scanner: Scanner = _NOT_SCANNING
    try:
        scanner = InProcessScanner.from_settings(settings)
    except Exception as exc:
        problems.append(f"scanning stack: {exc}")
    try:
        build_runtime(settings, scanner=scanner, metrics=Metrics()).close()
    except Exception as exc:
        problems.append(f"stores and alerts: {exc}")
    finally:
        if isinstance(scanner, InProcessScanner):
            scanner.close()
    return problems + [p for p in (_silent_resolver(settings), _silent_clamd(settings)) if p]


def _silent_resolver(settings: Settings) -> str:
    """A problem line when reputation is on and its resolver does not answer a probe, else "".

    Without an answering resolver every inbound message spends the whole lookup
    budget and is tagged unchecked: worth failing ``--check`` and an ERROR at start.
    """
    if not settings.reputation.enabled:
        return ""
    try:
        client = DnsClient.from_settings(settings.reputation)
        if client.responds():
            return ""
    except Exception as exc:  # e.g. no /etc/resolv.conf to read nameservers from
        return f"DNS resolver could not be probed: {exc}"
    servers = ", ".join(client.nameservers) or "none in /etc/resolv.conf"
    return (
        f"DNS resolver ({servers}, port {settings.reputation.port}) does not answer within "
        f"{settings.reputation.query_timeout:g} s: every inbound message would wait on DNS and be tagged "
        f"unchecked. Run a local caching resolver (Debian: apt-get install unbound, listening on "
        f"127.0.0.1) and point reputation.nameservers at it, or set reputation.enabled = false"
    )


def _silent_clamd(settings: Settings) -> str:
    """A problem line when ClamAV is configured and clamd does not answer PING, else "".

    Every message would then carry ``clamav-unavailable`` (unchecked: quarantined inbound by
    default), which an admin should hear about before the first message, not from the quarantine.
    """
    if not settings.clamav.socket:
        return ""
    try:
        version = clamd_version(settings.clamav)
    except Exception as exc:  # ClamdError, or a socket error naming the cause
        return (
            f"clamd ({settings.clamav.socket}) does not answer: {exc}. Every message would be unchecked "
            f"by ClamAV (clamav-unavailable). Start clamd (Debian: systemctl enable --now clamav-daemon) "
            f"or remove clamav.socket"
        )
    log.info("clamd answers: %s", version)
    return ""


def _warn_if_probes_fail(settings: Settings) -> None:
    """At start, beside it (a silent resolver or clamd costs every message): log problems as ERRORs."""
    for problem in (_silent_resolver(settings), _silent_clamd(settings)):
        if problem:
            log.error("%s", problem)


def remove_orphaned_spool(settings: Settings) -> None:
    """Spool files of messages a killed milter never finished: no message owns them any more."""
    removed = 0
    for path in (Path(settings.state_dir) / "spool").glob(f"{SPOOL_PREFIX}*{SPOOL_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d spool file(s) left by an earlier run", removed)


def _remove_socket(settings: Settings) -> None:
    """A unix socket left behind would look like a milter that is up."""
    kind, path, _port = parse_milter_socket(settings.milter.socket)
    if kind == "unix":
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass


def _stop_libmilter(settings: Settings) -> None:
    """Milter.stop() without the wait of up to 5 s for libmilter's listener.

    The listener holds its lock while it waits in select() for a connection (5 s at most), and
    Milter.stop() needs that lock after it has flagged the stop. So stop on a side thread, and
    connect to our own socket until it returns: each connection wakes the listener, which then
    sees the stop. A connection closed at once ends its session before the first command.
    """
    stopping = threading.Thread(target=Milter.stop, name="libmilter-stop", daemon=True)
    stopping.start()
    deadline = time.monotonic() + 10
    while stopping.is_alive() and time.monotonic() < deadline:
        _connect_once(settings)
        stopping.join(0.05)


def _connect_once(settings: Settings) -> None:
    kind, host, port = parse_milter_socket(settings.milter.socket)
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1.0)
                conn.connect(host)
        else:
            with socket.create_connection((host or "localhost", port), timeout=1.0):
                pass
    except OSError:
        pass  # the listener is closed already: nothing to wake


def _notify(*fields: str) -> None:
    """Tell systemd (Type=notify) about our state: a datagram to $NOTIFY_SOCKET, if it is set."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def _wait_listening(settings: Settings, running: threading.Thread, timeout: float = 30.0) -> None:
    """Return once libmilter listens, so READY=1 is true; an inet listener gets TCP_NODELAY first."""
    kind, path, port = parse_milter_socket(settings.milter.socket)
    deadline = time.monotonic() + timeout
    if kind == "unix":
        while running.is_alive() and not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    while running.is_alive() and time.monotonic() < deadline:
        if set_nodelay(port):
            return
        time.sleep(0.01)
    if running.is_alive():
        log.warning("could not set TCP_NODELAY on the milter socket: every reply may wait 40 ms for an ACK")


# sysexits EX_TEMPFAIL: libmilter stopped without being asked; the service manager restarts the milter.
EXIT_RESTART = 75
RULES_POLL = 5.0  # seconds between checks of the rule directories for edits


@dataclasses.dataclass(frozen=True)
class _RulesOnDisk:
    """Where the live rules come from, and the (path, mtime, size) marker of those files."""

    directories: tuple[tuple[str, Path], ...] = ()
    marker: Marker = ()


def _rules_on_disk(settings: Settings) -> _RulesOnDisk:
    return _rules_on_disk_now(_RulesOnDisk(tuple(rule_directories(settings))))


def _rules_on_disk_now(seen: _RulesOnDisk) -> _RulesOnDisk:
    return _RulesOnDisk(seen.directories, marker(list(seen.directories)))


def _scanning_inputs(settings: Settings, rules: _RulesOnDisk) -> tuple[Settings, Marker, Marker]:
    """What the scanning workers are built from: the settings and the (path, mtime, size) of
    their rule and hash list files. Equal inputs build equal workers, so a reload keeps them.
    (A newly promoted model needs no reload: the workers' model loader polls for it.)"""
    lists = [
        Source("", Path(name)) for name in (*settings.signatures.hash_lists, *settings.signatures.hash_allow_lists)
    ]
    return settings, rules.marker, stamp(lists)


class Daemon:
    """Holds the live runtime; each new message takes whatever is current.

    ``pool``: the scanning processes, already loading (``ScanPool(..., wait=False)``), or None
    when this process scans itself (``milter.workers = 0``); the daemon owns it from here on.
    """

    def __init__(
        self, args: argparse.Namespace, settings: Settings, overrides: dict[str, object], pool: ScanPool | None
    ):
        self.args = args
        self.settings = settings
        self.overrides = overrides
        # Workers scan: their first generation is the load check, and this process builds no scanner.
        # They load (forkserver imports, rules, model) while this process opens its stores.
        self.pool = pool
        # Taken before this process waits for the workers' load: an edit made while they load is
        # noticed by the poll. (They started loading just before this, in _start.)
        self.rules_seen = _rules_on_disk(settings)
        self.scanning_inputs = _scanning_inputs(settings, self.rules_seen)
        self.metrics = Metrics()  # kept across reloads: counters never reset while running
        over_tcp = parse_milter_socket(settings.milter.socket)[0] != "unix"
        self.milter_class = TcpMailwardMilter if over_tcp else MailwardMilter
        try:
            self.live = LiveRuntime(build_runtime(settings, workers=self.pool, metrics=self.metrics))
            if self.pool is not None:
                self.pool.wait_loaded()
        except BaseException:
            if self.pool is not None:
                self.pool.close()
            raise
        _observe(self.metrics, settings, self.live.current)
        self.next_reload = 0.0  # monotonic time before which a requested reload waits
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.metrics_server = (
            self.metrics.serve(settings.metrics.listen, settings.source) if settings.metrics.listen else None
        )

    def connection(self) -> MailwardMilter:
        return self.milter_class(self.live)

    def _reloads(self, failure: list[BaseException]) -> None:
        """Reloads and the poll of the rule files, off the main thread: a reload starts threads and
        processes, and a thread doing that blocks every signal meanwhile (milter/signals.py)."""
        try:
            next_rules_check = time.monotonic() + RULES_POLL
            while not self.stop_requested.wait(0.2):
                if time.monotonic() >= next_rules_check:
                    next_rules_check = time.monotonic() + RULES_POLL
                    on_disk = _rules_on_disk_now(self.rules_seen)
                    if on_disk != self.rules_seen:
                        log.info("rule files changed on disk; reloading")
                        self.rules_seen = on_disk  # a refused reload is not retried until the next edit
                        self.reload_requested.set()
                if self.reload_requested.is_set() and time.monotonic() >= self.next_reload:
                    self.reload_requested.clear()  # signals during the reload set it again: one more
                    self.reload()
        except BaseException as exc:  # a milter that can no longer reload stops, and says why
            log.exception("the reload thread failed; stopping")
            failure.append(exc)
            self.stop_requested.set()

    def reload(self) -> None:
        """Build and check the new runtime once, swap it in, retire the old one; or keep the old."""
        _notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            self._reload()
        finally:
            _notify("READY=1")

    def _reload(self) -> None:
        try:
            settings = load_settings(self.args.config, self.overrides)
        except Exception as exc:
            _refused(exc)
            return
        for key in (
            "milter.socket",
            "milter.workers",
            "metrics.listen",
            "incidents.follow_auth_log",
            "incidents.auth_log",
        ):
            section, name = key.split(".")
            if getattr(getattr(settings, section), name) != getattr(getattr(self.settings, section), name):
                log.warning("%s changed; it takes effect only after a restart", key)
        runtime = handler = None
        # The marker of the rules before they load: a file edited while the workers load differs
        # from it, so the next poll reloads again (taken afterwards, that edit was never loaded).
        rules_seen = _rules_on_disk(settings)
        inputs = _scanning_inputs(settings, rules_seen)
        try:
            handler = log_handler(settings.logging)  # first: a log file it cannot open refuses the reload
            runtime = build_runtime(settings, workers=self.pool, metrics=self.metrics)
            if self.pool is not None and inputs != self.scanning_inputs:
                started = time.monotonic()
                self.pool.reload(settings)  # the new workers are the rules and model check
                # Loading workers takes CPU from scanning ones: after a regeneration the next
                # reload waits as long as this one took, so loading never exceeds half the time.
                self.next_reload = time.monotonic() + (time.monotonic() - started)
            elif self.pool is not None:
                log.info("scanning settings, rules and hash lists unchanged: the scanning processes stay")
        except Exception as exc:
            if runtime is not None:
                runtime.close()
            if handler is not None:
                handler.close()  # refused: the running configuration keeps its log too
            _refused(exc)
            return
        install_log_handler(handler, settings.logging)
        self.rules_seen = rules_seen
        self.scanning_inputs = inputs
        self.live.swap(runtime)
        _observe(self.metrics, settings, runtime)
        self.settings = settings
        log.info("configuration, rules and model reloaded from %s", settings.source)

    def serve(self) -> int:
        Milter.factory = self.connection
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.DELRCPT)
        os.umask(0o007)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                keep_signals_from_this_thread()
                Milter.runmilter("mailward", self.settings.milter.socket, self.settings.milter.timeout)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)
            finally:
                self.stop_requested.set()

        signals = Signals(self.stop_requested, self.reload_requested)
        signals.take()
        # Every thread starts before libmilter's: from then on the main thread only waits (milter/signals.py).
        reloads = threading.Thread(target=self._reloads, name="reloads", daemon=True, args=(failure,))
        reloads.start()
        threading.Thread(target=_warn_if_probes_fail, name="probes", daemon=True, args=(self.settings,)).start()
        if self.settings.incidents.follow_auth_log:
            follower = LogFollower(self.settings.incidents.auth_log)
            threading.Thread(
                target=watch,
                name="auth-log",
                daemon=True,
                args=(
                    follower,
                    lambda address: self.live.current.kept_incidents().failed_login(address),
                    self.stop_requested,
                ),
            ).start()
        signals.start_stand_ins()
        thread = threading.Thread(target=run, name="libmilter", daemon=True)
        thread.start()
        _wait_listening(self.settings, thread)
        log.info("mailward-milter listening on %s", self.settings.milter.socket)
        _notify("READY=1", f"MAINPID={os.getpid()}")
        signals.serve()
        _notify("STOPPING=1")
        if thread.is_alive():
            _stop_libmilter(self.settings)
        thread.join(timeout=15)
        reloads.join()  # a reload in progress finishes before the pool closes
        _remove_socket(self.settings)
        if self.pool is not None:
            self.pool.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.live.close()
        signals.close()
        if failure:
            log.error("the milter could not run: %s", failure[0])
            return 1
        if not signals.asked_to_stop.is_set():
            # libmilter's signal thread took a SIGHUP or SIGTERM meant for us (milter/signals.py: only when
            # signals come faster than our threads run); libmilter cannot start twice in one process, and
            # which signal it was is lost, so exit with a status the unit restarts on unless it was stopping.
            log.error(
                "libmilter stopped on a signal this process did not handle (a SIGHUP, SIGTERM or SIGINT taken "
                "by libmilter's own signal thread); exiting with status %d so the service manager restarts the "
                "milter unless it was stopping it",
                EXIT_RESTART,
            )
            return EXIT_RESTART
        log.info("mailward-milter stopped")
        return 0


def _refused(exc: Exception) -> None:
    """Log a reload that cannot be done; the running configuration keeps serving. A failure no
    check foresaw gets its traceback."""
    if isinstance(exc, (MailwardError, OSError)):
        log.error("reload refused, keeping the running configuration: %s", exc)
    else:
        log.exception("reload refused, keeping the running configuration")


def report_check(settings: Settings, found: list[str] | None = None, state_dir: str = "") -> int:
    """``--check``: print each problem a start would meet (``found``: those seen before the drop of
    privileges); the exit status. ``state_dir``: the directory the stores are checked in, when a
    stand-in for a ``settings.state_dir`` that a start would create."""
    checked = dataclasses.replace(settings, state_dir=state_dir) if state_dir else settings
    problems = (found or []) + _check_start(checked)
    for problem in problems:
        print(f"mailward-milter: {problem}", file=sys.stderr)
    if problems:
        print(f"mailward-milter: configuration {settings.source} has {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"mailward-milter: configuration {settings.source} is valid; rules compile, model and stores load "
        f"(state_dir {settings.state_dir}{', created at start' if state_dir else ''}, "
        f"socket {settings.milter.socket})"
    )
    return 0
