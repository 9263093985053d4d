"""The milter driven in process through pymilter's TestCtx, on the runtime the daemon builds.

``milter_runtime`` (a fixture) builds runtimes with :func:`mailward.runtime.build_runtime`
(stores, incident response, an in-process scanner: what ``mailward-milter`` runs with
``workers = 0``) and closes them after the test; :class:`MilterClient` plays the MTA.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from mailward.config import Settings, load_settings
from mailward.envelope import Envelope
from mailward.evidence import Evidence
from mailward.logs import EcsJsonFormatter
from mailward.metrics import Metrics
from mailward.milter.adapter import MailwardMilter
from mailward.runtime import InProcessScanner, LiveRuntime, Runtime, build_runtime
from mailward.source import MessageSource

# TestCtx treats a NOREPLY answer as a rejection: the milter is offered none of these protocol bits.
NO_REPLY_BITS = (
    Milter.P_NR_CONN
    | Milter.P_NR_HELO
    | Milter.P_NR_MAIL
    | Milter.P_NR_RCPT
    | Milter.P_NR_DATA
    | Milter.P_NR_UNKN
    | Milter.P_NR_EOH
    | Milter.P_NR_BODY
    | Milter.P_NR_HDR
)
QUEUE_ID = "4ABCDE1234"


def settings_for(tmp_path: Path, toml: str = "") -> Settings:
    """Settings with their state under ``tmp_path``; DNS checks off (they have their own loopback tests)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{state}"\n[reputation]\nenabled = false\n{toml}\n')
    (state / "spool").mkdir(parents=True, exist_ok=True)
    return load_settings(cfg)


class ScanWith:
    """A scanner that calls ``scan(source, envelope)``: a worker that fails, or one the test watches."""

    def __init__(self, scan: Callable[[MessageSource, Envelope], Evidence]):
        self.scan = scan


MakeRuntime = Callable[..., Runtime]


def _scanning_inputs(settings: Settings) -> tuple[object, ...]:
    """What an in-process scanner is built from, but for the state directory: a fresh one holds
    no site model, and its rules cache changes no result."""
    q = settings.quarantine
    return (
        settings.signatures,
        settings.clamav,
        settings.limits,
        settings.model,
        settings.reputation,
        settings.alerts,
        settings.milter.user,
        (q.backend, q.dsn, q.write_timeout),
    )


@pytest.fixture(scope="session")
def shared_scanners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path, str], InProcessScanner]]:
    """``scanner(tmp_path, toml)``: one in-process scanner per set of scanning inputs for the session.

    Loading the model and the compiled rules takes ~0.6 s a runtime; tests whose settings differ
    only in policy, stores or alerts scan alike, so they share one scanner, as a reload that keeps
    the workers does.
    """
    built: list[tuple[tuple[object, ...], InProcessScanner]] = []

    def scanner(tmp_path: Path, toml: str) -> InProcessScanner:
        inputs = _scanning_inputs(settings_for(tmp_path, toml))
        for known, shared in built:
            if known == inputs:
                return shared
        shared = InProcessScanner.from_settings(settings_for(tmp_path_factory.mktemp("scanner"), toml))
        built.append((inputs, shared))
        return shared

    yield scanner
    for _, shared in built:
        shared.close()


@pytest.fixture
def milter_runtime(shared_scanners: Callable[[Path, str], InProcessScanner]) -> Iterator[MakeRuntime]:
    """``make(tmp_path, toml="", *, scan=None, metrics=None, clock=time.time)``: a runtime, closed after the test.

    Without ``scan`` it scans with the session's scanner for these scanning inputs (``shared_scanners``).
    """
    built: list[Runtime] = []

    def make(
        tmp_path: Path,
        toml: str = "",
        *,
        scan: Callable[[MessageSource, Envelope], Evidence] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Runtime:
        scanner = ScanWith(scan) if scan else shared_scanners(tmp_path, toml)
        runtime = build_runtime(settings_for(tmp_path, toml), scanner=scanner, metrics=metrics, clock=clock)
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        runtime.close()


class Ctx(testctx.TestCtx):
    """pymilter's TestCtx, recording what the milter put on hold (TestCtx has no quarantine())."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.changed: list[tuple[str, int, str]] = []

    def quarantine(self, reason: str) -> None:
        self.held.append(reason)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        """Recorded as asked: TestCtx changes every field of that name, whatever the index."""
        self.changed.append((field, idx, value))
        super().chgheader(field, idx, value)

    # TestCtx keeps what the milter answered under private names; the tests read it here.
    @property
    def reply(self) -> tuple[str, str, str]:
        """The last SMTP reply the milter set: (code, extended code, text)."""
        return self._reply

    @property
    def delivered(self) -> Message:
        """The message as the milter leaves it for delivery (headers added and changed)."""
        return self._msg

    def send_rcpt(self, to: str) -> int:
        """RCPT TO alone, whatever came before it (an MTA out of step)."""
        return self._envrcpt(to)

    def send_header(self, name: str, value: str) -> int:
        return self._header(name, value)

    def send_eom(self) -> int:
        """End of message: the milter's final answer."""
        return self._eom()


class MilterClient:
    """Plays the MTA: one SMTP connection per :meth:`connect`, each served by a new MailwardMilter."""

    def __init__(self, runtime: Runtime | LiveRuntime, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(Milter, "factory", lambda: MailwardMilter(runtime))
        monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF & ~NO_REPLY_BITS, 0, 0])

    @staticmethod
    def connect(ip: str = "198.51.100.7", auth: str = "", daemon: str = "", helo: object = "") -> tuple[int, Ctx]:
        """Connect (and say HELO); ``auth`` and ``daemon`` become Postfix's SASL and daemon-name macros."""
        ctx = Ctx()
        if auth:
            ctx._setsymval("{auth_authen}", auth)
        if daemon:
            ctx._setsymval("{daemon_name}", daemon)
        ctx._setsymval("i", QUEUE_ID)
        return (ctx._connect(ip=ip, helo=helo) if helo else ctx._connect(ip=ip)), ctx

    @staticmethod
    def send(ctx: Ctx, raw: bytes, sender: str = "alice@example.org", *rcpts: str) -> int:
        """One message on the connection: MAIL FROM to end of message; the milter's final answer."""
        return ctx._feedFile(io.BytesIO(raw), sender, *(rcpts or ("user@example.test",)))


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, on the thread that logs it, as the log file handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(EcsJsonFormatter())
        self.docs: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.docs.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    """Every line logged during the test (INFO and above), as the ECS documents the milter writes."""
    handler = JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
