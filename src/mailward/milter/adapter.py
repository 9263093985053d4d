"""The pymilter side: collect what the MTA sends, call the screener, apply the verdict.

No detection and no decision happens here: the screener decides every verdict
(a block refused before DATA, a failed callback's ``on_error``, the content's),
and the adapter translates it into milter calls. Every callback catches everything: an exception in a
reply callback would send pymilter's own text (naming internals) to the client,
and one in a ``noreply`` callback would leave Postfix waiting for its content
timeout. A failure is remembered and answered at end of message with the
screener's ``on_error`` outcome for the direction and a generic reply: a failure at connect or
HELO for every message of the connection (:class:`Connection`), a later one for
that message (:class:`Transaction`, fresh per message). Nothing fails open.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVarTuple

import Milter

from ..addresses import without_route
from ..envelope import Envelope
from ..errors import MailwardError
from ..evidence import NOTHING_KNOWN, Evidence, Finding
from ..incidents import Block, block_finding
from ..logs import LogContext, log_context
from ..reputation import claims_our_id
from ..runtime import LiveRuntime, Runtime
from ..screening import report
from ..textsafe import valid_text
from ..verdict import Action, Outcome, Verdict, new_incident_id
from .buffer import MessageBuffer

log = logging.getLogger(__name__)

OUR_HEADER_PREFIX = "x-mailward-"
AUTH_RESULTS = "authentication-results"
SPAM_FLAG = "x-spam-flag"
SPAM_REASONS = frozenset({"spam", "phishing"})  # what X-Spam-Flag and the subject tag mark


@dataclass
class Connection:
    """Facts about the SMTP client, for every message of the connection.

    ``failure`` set by the connect or HELO callback makes every message of
    the connection end in its direction's ``on_error`` verdict.
    """

    id: str
    address: str = ""
    name: str = ""
    helo: str = ""
    daemon: str = ""
    local_submission: bool = False  # the local sendmail command, not an SMTP client
    findings: tuple[Finding, ...] = ()  # a client block whose policy is not to refuse
    failure: str = ""


@dataclass
class Transaction:
    """One message, MAIL FROM to end of message; a fresh one per message so nothing leaks across."""

    runtime: Runtime
    mail_from: str = ""
    auth_user: str = ""
    queue_id: str = ""
    recipients: list[str] = field(default_factory=list)
    findings: tuple[Finding, ...] = ()  # a sender block whose policy is not to refuse
    watched_headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> values
    subject: bytes | None = None  # the first Subject value, as received (for the subject tag)
    buffer: MessageBuffer | None = None
    # Header fields as received, not yet in the buffer: kept per callback with one append and read
    # in one pass at the end of the header block (or once they outgrow the spool threshold).
    fields: list[tuple[str, bytes]] = field(default_factory=list)
    field_bytes: int = 0
    in_body: bool = False
    failure: str = ""

    def opened_buffer(self) -> MessageBuffer:
        """The buffer MAIL FROM opened; raises without one, which the callback answers with on_error."""
        if self.buffer is None:
            raise MailwardError("no message buffer: MAIL FROM was not accepted")
        return self.buffer


CONNECTION_CALLBACKS = ("connect", "hello")


_Args = ParamSpec("_Args")
_Ts = TypeVarTuple("_Ts")


def _unanswered(callback: Callable[[MailwardMilter, *_Ts], int]) -> Callable[[MailwardMilter, *_Ts], int]:
    """Mark a data callback as one the MTA need not wait for (what ``Milter.noreply`` marks).

    No wrapper: the callback catches its own errors (remembered, answered at end of message)
    and returns :meth:`MailwardMilter._no_reply`. The header and body callbacks are written so,
    being called per field and chunk; the rarer ones through :func:`_noreply_quietly`.
    """
    callback.__dict__["milter_protocol"] = Milter.OPTIONAL_CALLBACKS[callback.__name__][0]  # KeyError: must answer
    return callback


def _noreply_quietly(callback: Callable[[MailwardMilter, *_Ts], int]) -> Callable[[MailwardMilter, *_Ts], int]:
    """:func:`_unanswered` for a callback that does not catch its own errors (HELO, RCPT)."""
    name = callback.__name__
    mask = Milter.OPTIONAL_CALLBACKS[name][0]

    @functools.wraps(callback)
    def wrapper(self: MailwardMilter, /, *args: *_Ts) -> int:
        try:
            callback(self, *args)  # CONTINUE: the data callbacks answer nothing else
        except Exception:
            self._fail(name)
        return self._no_reply(mask)

    return _unanswered(wrapper)


def _continue_on_error(
    callback: Callable[Concatenate[MailwardMilter, _Args], int],
) -> Callable[Concatenate[MailwardMilter, _Args], int]:
    """Run a callback that answers (connect, MAIL FROM) in the connection's log context, so it never
    raises: the error is remembered and answered at end of message."""

    @functools.wraps(callback)
    def guarded(self: MailwardMilter, /, *args: _Args.args, **kwargs: _Args.kwargs) -> int:
        with self._log_context():
            try:
                return callback(self, *args, **kwargs)
            except Exception:
                self._fail(callback.__name__)
                return Milter.CONTINUE

    return guarded


def _addr(value: str) -> str:
    return valid_text(value.strip().removeprefix("<").removesuffix(">"))


def _recipient(rcpt: str) -> str:
    """A RCPT argument as Postfix's smtpd keeps it for the recipient a delrcpt is matched against:
    a source route (``@hop.example:``) dropped, the rest as written. Not ``{rcpt_addr}``, which is
    the address resolved later (domain lower-cased, a trailing dot gone) and matches no delrcpt."""
    return without_route(_addr(rcpt))


def _is_local_submission(hostaddr: object) -> bool:
    """Postfix's non_smtpd_milters announce the sendmail command as a loopback "client" on port 0
    (no TCP connection exists); a real client always has a port. No address at all counts too."""
    if hostaddr is None or hostaddr == "":
        return True
    if not isinstance(hostaddr, tuple) or len(hostaddr) < 2:
        return False
    try:
        return hostaddr[1] == 0 and ipaddress.ip_address(str(hostaddr[0])).is_loopback
    except ValueError:
        return False


@Milter.header_leading_space
class MailwardMilter(Milter.Base):
    def __init__(self, live: LiveRuntime | Runtime) -> None:
        self._live = live if isinstance(live, LiveRuntime) else LiveRuntime(live)
        self._connection = Connection(secrets.token_hex(4))
        self._message: Transaction | None = None

    # --- helpers -------------------------------------------------------
    def _begin(self) -> Transaction:
        self._end()
        self._message = Transaction(self._live.acquire())
        return self._message

    def _end(self) -> None:
        """Discard the message's spool and return its runtime lease."""
        message, self._message = self._message, None
        if message is None:
            return
        try:
            if message.buffer is not None:
                message.buffer.discard()
        finally:
            self._live.release(message.runtime)

    def _ongoing(self) -> Transaction:
        """The message in progress; raises outside one (a callback out of order), answered with on_error."""
        if self._message is None:
            raise MailwardError("no message in progress")
        return self._message

    @property
    def _runtime(self) -> Runtime:
        return self._message.runtime if self._message is not None else self._live.current

    def _log_context(self) -> AbstractContextManager[LogContext]:
        """This connection's and message's IDs on every line logged within (see logs.log_context)."""
        queue_id = self._message.queue_id if self._message is not None else ""
        return log_context(queue_id=queue_id, connection_id=self._connection.id)

    def _fail(self, where: str) -> None:
        """Remember an internal error: for the connection (connect, HELO) or this message."""
        with self._log_context():  # the callback may have just learnt the queue ID
            log.exception("internal error in %s callback", where)
        holder: Connection | Transaction
        if where in CONNECTION_CALLBACKS:
            holder = self._connection
        else:
            holder = self._message if self._message is not None else self._begin()
        if not holder.failure:
            holder.failure = f"error in {where}"

    def _no_reply(self, mask: int) -> int:
        """What a data callback returns: NOREPLY where ``mask`` (its P_NR_* bit) was negotiated."""
        return Milter.NOREPLY if self._protocol & mask else Milter.CONTINUE

    def _macro(self, name: str) -> str:
        try:
            return valid_text(self.getsymval(name) or "")
        except Exception:
            return ""

    def _refusal(self, block: Block) -> Verdict | None:
        """The screener's verdict if it refuses the blocked client or sender now, else None (reported here)."""
        outcome = self._runtime.screener.refuse_before_data(
            self._envelope(), Evidence(findings=(block_finding(block),)), block.incident_id
        )
        if outcome is None:
            return None
        self._report(outcome)
        return outcome.verdict

    def _report(self, outcome: Outcome, screened: bool = False) -> None:
        """The metrics of every message, and the summary line of one the screener did not screen (refused
        before its content, failed callbacks): a screened one's was written where it was screened."""
        if not screened:
            report(outcome)
        if self._runtime.metrics is not None:
            try:
                self._runtime.metrics.observe(outcome)
            except Exception:
                log.exception("could not update the metrics")

    # --- callbacks -----------------------------------------------------
    @_continue_on_error
    def connect(self, hostname: str | None, family: int, hostaddr: object) -> int:
        """A blocked client is refused here, before it can even try AUTH.

        libmilter ignores a custom reply at connect: Postfix answers its own
        generic "554 ... not accepting connections"; our log line has the incident ID.
        """
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else (hostaddr or "")
        client = self._connection
        client.address, client.name = str(address), valid_text(str(hostname or ""))
        client.daemon = self._macro("{daemon_name}")
        client.local_submission = _is_local_submission(hostaddr)
        incidents = self._runtime.incidents
        block = incidents.client_block(client.address) if incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            client.findings = (block_finding(block),)
        return Milter.CONTINUE

    @_noreply_quietly
    def hello(self, hostname: str) -> int:
        self._connection.helo = valid_text(str(hostname))
        return Milter.CONTINUE

    @_continue_on_error
    def envfrom(self, mailfrom: str, *params: str) -> int:
        message = self._begin()
        message.mail_from = _addr(mailfrom)
        message.auth_user = self._macro("{auth_authen}")
        message.queue_id = self._macro("i")
        rt = message.runtime
        block = rt.incidents.sender_block(message.auth_user, message.mail_from) if rt.incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                reply = verdict.refusal_reply()
                self.setreply(reply.code, reply.xcode, reply.text)
                self._end()
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            message.findings = (block_finding(block),)
        message.buffer = MessageBuffer(rt.spool_threshold, rt.spool_dir)
        return Milter.CONTINUE

    @_noreply_quietly
    def envrcpt(self, to: str, *params: str) -> int:
        """The recipient as Postfix records it, the spelling a delrcpt must match or a held recipient still
        gets the message: as written, less a source route (:func:`_recipient`). :func:`~mailward.policy.split`
        keeps one that is not UTF-8, which pymilter cannot hand back, from being split off."""
        self._ongoing().recipients.append(_recipient(to))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @_unanswered
    def header(self, name: str, value: bytes) -> int:
        """Called per header field, the commonest callback: the field is only kept here (:meth:`_take_fields`)."""
        try:
            message = self._message
            if message is None:
                raise MailwardError("no message in progress")
            message.fields.append((name, value))
            message.field_bytes += len(value)
            if message.field_bytes > message.runtime.spool_threshold:
                self._take_fields(message)
        except Exception:
            self._fail("header")
        return self._no_reply(Milter.P_NR_HDR)

    @_unanswered
    def body(self, chunk: bytes) -> int:
        try:
            message = self._message
            if message is None:
                raise MailwardError("no message in progress")
            if not message.in_body:
                self._end_headers(message)
            if message.buffer is not None and not (self._connection.failure or message.failure):
                message.buffer.add_body(chunk)
        except Exception:
            self._fail("body")
        return self._no_reply(Milter.P_NR_BODY)

    def _take_fields(self, message: Transaction) -> None:
        """Move the fields kept so far into the buffer, noting the Subject and the fields we replace.

        A failure here is the header callback's: answered with on_error at end of message.
        """
        fields, message.fields, message.field_bytes = message.fields, [], 0
        # Noted first, failure or not: an on_error "accept" copy loses the forged fields like any other.
        watched = message.watched_headers
        for name, value in fields:
            lower = name.lower()
            if lower == "subject":
                if message.subject is None:
                    message.subject = value
            elif lower.startswith(OUR_HEADER_PREFIX) or lower in (AUTH_RESULTS, SPAM_FLAG):
                watched.setdefault(lower, []).append(value.decode("utf-8", "replace"))
        if self._connection.failure or message.failure:
            return  # answered with on_error at end of message; nothing to keep
        try:
            message.opened_buffer().add_headers(fields)  # names as text, values as bytes (Milter.decode)
        except Exception:
            self._fail("header")

    def _end_headers(self, message: Transaction) -> None:
        """The header block is complete (first body chunk, or end of message without a body)."""
        self._take_fields(message)
        message.in_body = True
        if message.buffer is not None and not (self._connection.failure or message.failure):
            message.buffer.end_headers()

    def eom(self) -> int:
        if self._message is not None:
            self._message.queue_id = self._macro("i") or self._message.queue_id
        with self._log_context():
            return self._end_of_message()

    def _end_of_message(self) -> int:
        outcome: Outcome | None = None
        screened = False
        try:
            try:
                message = self._message
                if message is None:  # eom() read the queue ID of a message begun before
                    message = self._begin()
                    message.queue_id = self._macro("i")
                failure = self._connection.failure or message.failure
                if failure:
                    outcome = self._failure_outcome(failure)
                else:
                    if not message.in_body:
                        self._end_headers(message)
                    outcome, screened = self._screen(), True
            except Exception:
                self._fail("eom")
                outcome, screened = self._failure_outcome(self._connection.failure or self._ongoing().failure), False
            return self._apply(outcome)
        except Exception:
            log.exception("could not apply the verdict")
            return self._apply_failure()
        finally:
            try:
                if outcome is not None:
                    self._report(outcome, screened)
            finally:
                self._end()

    def abort(self) -> int:
        if self._message is None:  # Postfix sends one after every transaction, most after end of message
            return Milter.CONTINUE
        with self._log_context():
            try:
                self._end()
            except Exception:
                log.exception("abort cleanup failed")
        return Milter.CONTINUE

    def close(self) -> int:
        with self._log_context():
            try:
                self._end()
            except Exception:
                log.exception("close cleanup failed")
        return Milter.CONTINUE

    # --- decision ------------------------------------------------------
    def _envelope(self) -> Envelope:
        client, message = self._connection, self._message
        envelope = Envelope(
            client_address=client.address,
            client_name=client.name,
            helo=client.helo,
            daemon=client.daemon,
            connection_id=client.id,
            local_submission=client.local_submission,
            mail_from=message.mail_from if message is not None else "",
            recipients=tuple(message.recipients) if message is not None else (),
            auth_user=message.auth_user if message is not None else "",
            queue_id=message.queue_id if message is not None else "",
        )
        direction = self._runtime.direction.classify(envelope)
        return envelope if direction is envelope.direction else envelope.with_direction(direction)

    def _screen(self) -> Outcome:
        message = self._ongoing()
        findings = self._connection.findings + message.findings
        known = Evidence(findings=findings) if findings else NOTHING_KNOWN
        return message.runtime.screener.screen(message.opened_buffer().source(), self._envelope(), known)

    def _failure_outcome(self, failure: str) -> Outcome:
        """The direction's on_error verdict for a message whose callbacks (or connection) failed."""
        buffer = self._message.buffer if self._message is not None else None
        return self._runtime.screener.failure(self._envelope(), failure, buffer.size if buffer is not None else 0)

    def _apply(self, outcome: Outcome) -> int:
        verdict = outcome.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            reply = verdict.refusal_reply()
            self.setreply(reply.code, reply.xcode, reply.text)
            return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
        for recipient in outcome.held:  # quarantined for them; the others get the message
            self.delrcpt(f"<{recipient}>")
        self._replace_our_headers(verdict)
        for name, value in outcome.evidence.headers:  # trace fields such as Authentication-Results
            self.addheader(name, " " + value, 0)
        if verdict.action is Action.QUARANTINE:
            if verdict.hold:
                self.quarantine(f"Mailward incident {verdict.incident_id}")
                return Milter.ACCEPT
            return Milter.DISCARD  # stored in our quarantine: nothing is lost
        return Milter.ACCEPT

    def _replace_our_headers(self, verdict: Verdict) -> None:
        """Drop what the sender forged in our name (X-Mailward-*, our Authentication-Results), then add ours.

        The MTA numbers a header's occurrences per name, case-insensitively,
        so deleting from the last occurrence backwards keeps indexes valid.
        """
        authserv_id = self._runtime.authserv_id
        marks = self._runtime.screener.settings.headers
        for name, values in self._ongoing().watched_headers.items():
            if name == SPAM_FLAG and not marks.spam_flag:
                continue  # not ours to vouch for: left as the sender wrote it
            for index in range(len(values), 0, -1):
                if name != AUTH_RESULTS or (authserv_id and claims_our_id(values[index - 1], authserv_id)):
                    self.chgheader(name, index, "")
        self._add_header("X-Mailward-Verdict", verdict.action.value)
        if verdict.spam_score is not None:
            self._add_header("X-Mailward-Spam-Score", f"{verdict.spam_score:.3f}")
        if verdict.reasons:
            self._add_header("X-Mailward-Reasons", ", ".join(verdict.reasons))
        self._add_header("X-Mailward-Incident", verdict.incident_id)
        if verdict.action is Action.TAG and SPAM_REASONS.intersection(verdict.reasons):
            if marks.spam_flag:
                self._add_header("X-Spam-Flag", "YES")
            if marks.subject_tag:
                self._tag_subject(marks.subject_tag)

    def _add_header(self, name: str, value: str) -> None:
        """Add ``Name: value``: with leading-space headers negotiated, the MTA writes the value as given."""
        self.addheader(name, " " + value)

    def _tag_subject(self, tag: str) -> None:
        """Put ``tag`` before the Subject (or add one); a subject already tagged is left alone.

        A Subject that is not UTF-8 (raw 8-bit) cannot be handed back unchanged
        through pymilter's text interface, so it keeps its bytes and only the
        headers mark the message.
        """
        raw = self._ongoing().subject
        if raw is None:
            self._add_header("Subject", tag.strip())
            return
        try:
            subject = raw.decode("utf-8").lstrip(" \t")
        except UnicodeDecodeError:
            log.warning("subject not tagged: it is not UTF-8")
            return
        if not subject.startswith(tag.strip()):
            self.chgheader("Subject", 1, " " + tag + subject)

    def _apply_failure(self) -> int:
        """Last resort when even applying a verdict failed: tempfail generically."""
        try:
            reply = Verdict(Action.TEMPFAIL, ("error",), new_incident_id()).refusal_reply()
            self.setreply(reply.code, reply.xcode, reply.text)
        except Exception:
            log.exception("could not set the tempfail reply")
        return Milter.TEMPFAIL


class TcpMailwardMilter(MailwardMilter):
    """The milter for ``inet:`` sockets: it answers DATA instead of skipping it.

    Postfix sends the DATA macros even for a milter that skips DATA, as a write
    of their own that gets no reply. With Nagle's algorithm on Postfix's side,
    its next write (the headers) then waits for the ACK of that one, which the
    milter's kernel delays by 40 ms: every message stalled. Answering DATA
    turns the macros into part of a command with a reply. Headers and body
    stay unanswered: Postfix buffers those and sends them with end of message
    in one write. On a unix socket there is no Nagle and no stall.
    """

    # Bits turned off in what the MTA offers: DATA is neither skipped nor left unanswered.
    _protocol_mask = MailwardMilter.protocol_mask() | Milter.P_NODATA | Milter.P_NR_DATA

    def data(self) -> int:
        return Milter.CONTINUE
