"""Messages, verdicts, a fake clock and an SMTP receiver shared by the quarantine tests."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mailward.cli.quarantine import register
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Clue, Evidence, Finding, Severity, SpamAssessment
from mailward.verdict import Action, Verdict, new_incident_id


class FakeClock:
    """A clock the test moves by hand (stores take the clock as a constructor argument)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def envelope(
    sender: str = "alice@example.org", recipients=("bob@example.net",), direction: Direction = Direction.INBOUND
) -> Envelope:
    return Envelope(
        mail_from=sender,
        recipients=tuple(recipients),
        client_address="192.0.2.7",
        client_name="mx.example.org",
        helo="mx.example.org",
        queue_id="4ABC123",
        connection_id="c1",
        direction=direction,
    )


def spam_case(score: float = 0.97) -> tuple[Verdict, Evidence]:
    evidence = Evidence(
        findings=(Finding(Category.SPAM, "gtube", Severity.HIGH, "gtube", "part 1", "GTUBE string"),),
        spam=SpamAssessment(score, (Clue("viagra", 2.5), Clue("meeting", -1.25)), "nb-1"),
    )
    return Verdict(Action.QUARANTINE, ("spam",), new_incident_id(), score), evidence


def malware_case() -> tuple[Verdict, Evidence]:
    evidence = Evidence(
        findings=(
            Finding(Category.MALWARE, "EICAR_Test_File", Severity.CRITICAL, "yara", "invoice.zip > eicar.com", ""),
        )
    )
    return Verdict(Action.QUARANTINE, ("malware",), new_incident_id()), evidence


class SmtpSink:
    """A tiny SMTP receiver on loopback (aiosmtpd) standing in for the release relay."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        import socket

        from aiosmtpd.controller import Controller

        self.received: list[tuple[str, tuple[str, ...], bytes]] = []
        self.refuse = set(refuse)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content))
        return "250 OK queued"

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (the relay is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quarantine_cli(settings: Any, capsys: Any) -> Callable[..., tuple[int, str, str]]:
    """``run("list", "--json")``: a `mailward quarantine` command on ``settings``; its code, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="mailward")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(["quarantine", *argv])
        code = args.handler(args, settings)
        out, err = capsys.readouterr()
        return code, out, err

    return run
