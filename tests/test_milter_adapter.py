"""The pymilter adapter driven in process by pymilter's TestCtx (no MTA)."""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

import Milter
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailward.evidence import Evidence
from mailward.milter.buffer import MessageBuffer
from mailward.quarantine import open_store
from mailward.quarantine.records import ListFilter
from mailward.runtime import InProcessScanner, LiveRuntime, Runtime
from support.mail import eicar_message, gtube_message, message
from support.milter import QUEUE_ID, MilterClient, settings_for

INTERNALS = re.compile(r"EICAR|yara|Traceback|Error|pymilter", re.I)


@pytest.fixture
def feed(monkeypatch):
    """``feed(runtime, raw, auth="", ip=...)``: one message on a new connection; (final answer, context)."""

    def run(rt: Runtime, raw: bytes, auth: str = "", ip: str = "198.51.100.7"):
        client = MilterClient(rt, monkeypatch)
        rc, ctx = client.connect(ip=ip, auth=auth)
        assert rc == Milter.CONTINUE
        return client.send(ctx, raw, "sender@example.org", "user@example.test"), ctx

    return run


def test_clean_message_accepted_with_headers(tmp_path, feed, milter_runtime):
    rc, ctx = feed(milter_runtime(tmp_path), message()[1])
    assert rc == Milter.ACCEPT
    # Leading-space headers are negotiated: the value carries the space the MTA writes after the colon.
    assert ctx.delivered["X-Mailward-Verdict"] == " accept"
    assert ctx.delivered["X-Mailward-Incident"].startswith(" MW-")


def test_authenticated_sender_gets_outbound_policy(tmp_path, feed, milter_runtime):
    rt = milter_runtime(tmp_path, '[policy.inbound]\nspam_action = "tag"\n[policy.outbound]\nspam_action = "reject"\n')
    rc, _ = feed(rt, gtube_message()[1])
    assert rc == Milter.ACCEPT
    rc, ctx = feed(rt, gtube_message()[1], auth="alice")
    assert rc == Milter.REJECT
    assert ctx.reply[0] == "550"


def test_internal_network_is_outbound(tmp_path, feed, milter_runtime):
    rt = milter_runtime(
        tmp_path,
        '[direction]\ninternal_networks = ["192.0.2.0/24"]\n'
        '[policy.outbound]\nspam_action = "reject"\n[policy.inbound]\nspam_action = "tag"\n',
    )
    assert feed(rt, gtube_message()[1], ip="192.0.2.10")[0] == Milter.REJECT


def test_unexpected_scan_exception_tempfails_generically(tmp_path, feed, milter_runtime):
    def explode(raw, env):
        raise ZeroDivisionError("internal detail")

    rc, ctx = feed(milter_runtime(tmp_path, scan=explode), message()[1])
    assert rc == Milter.TEMPFAIL
    code, xcode, text = ctx.reply
    assert code == "451" and xcode.startswith("4.") and "incident MW-" in text
    assert not INTERNALS.search(text) and "internal detail" not in text


def test_on_error_accept_is_honoured(tmp_path, feed, milter_runtime):
    from mailward.errors import ScanFailed

    def dead(raw, env):
        raise ScanFailed("worker died")

    rc, _ = feed(milter_runtime(tmp_path, '[policy.inbound]\non_error = "accept"\n', scan=dead), message()[1])
    assert rc == Milter.ACCEPT


def test_failure_in_noreply_callback_is_answered_at_eom(tmp_path, feed, milter_runtime):
    rt = milter_runtime(tmp_path)
    spool = tmp_path / "state" / "spool"
    spool.rmdir()
    spool.write_text("x")  # the body spool cannot be created
    rt = replace(rt, spool_dir=spool, spool_threshold=0)
    rc, ctx = feed(rt, message()[1])
    assert rc == Milter.TEMPFAIL
    assert not INTERNALS.search(ctx.reply[2])


def test_quarantine_discards_from_flow_after_storing(tmp_path, feed, milter_runtime):
    rt = milter_runtime(tmp_path, '[policy.inbound]\nmalware_action = "quarantine"\n')
    rc, ctx = feed(rt, eicar_message()[1])
    assert rc == Milter.DISCARD
    stored = [p for p in (tmp_path / "state" / "quarantine").rglob("*.eml")]
    assert len(stored) == 1 and b"invoice.com" in stored[0].read_bytes()


def test_an_envelope_with_undecodable_bytes_is_quarantined_not_tempfailed(tmp_path, monkeypatch, milter_runtime):
    """A sender and recipient that are not UTF-8 (as pymilter passes them: lone surrogates) are kept."""
    rt = milter_runtime(tmp_path, '[policy.inbound]\nmalware_action = "quarantine"\n')
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect()
    assert client.send(ctx, eicar_message()[1], "ann\udcff@example.org", "b\udce9b@example.test") == Milter.DISCARD
    with open_store(rt.screener.settings) as store:
        [record] = store.list(ListFilter())
    assert record.envelope.mail_from == "ann\ufffd@example.org"
    assert record.envelope.recipients == ("b\ufffdb@example.test",)


def test_quarantine_with_hold_uses_mta_hold(tmp_path, feed, milter_runtime):
    rt = milter_runtime(tmp_path, '[policy.inbound]\nmalware_action = "quarantine"\n[quarantine]\nhold = true\n')
    rc, ctx = feed(rt, eicar_message()[1])
    assert rc == Milter.ACCEPT and ctx.held and "MW-" in ctx.held[0]


def test_large_body_is_spooled_and_cleaned_up(tmp_path, feed, milter_runtime):
    inner = InProcessScanner.from_settings(settings_for(tmp_path / "scanner"))
    seen = []

    def spy(source, env):
        seen.append(source.is_spooled)
        return inner.scan(source, env)

    rt = replace(milter_runtime(tmp_path, scan=spy), spool_threshold=1024)
    rc, _ = feed(rt, eicar_message(body="x" * 50_000)[1])
    assert rc == Milter.REJECT and seen == [True]
    assert list(rt.spool_dir.iterdir()) == []  # the spool file is gone after the message


class _ClientBlockFails:
    """An incident response whose lookups fail: the connect (or MAIL FROM) callback raises."""

    def __init__(self, where: str):
        self.where = where

    def client_block(self, address):
        if self.where == "connect":
            raise RuntimeError("client lookup failed")
        return None

    def sender_block(self, user, sender):
        if self.where == "envfrom":
            raise RuntimeError("sender lookup failed")
        return None


class _Unprintable:
    def __str__(self):
        raise RuntimeError("helo failed")


def _inject(where: str, monkeypatch, rt: Runtime) -> tuple[Runtime, str, object]:
    """A runtime and HELO name that make the ``where`` callback raise, and a function that stops it."""
    from dataclasses import replace as dc_replace

    from mailward.milter import adapter, buffer

    helo, disarm = "client.example.org", monkeypatch.undo
    if where in ("connect", "envfrom"):
        incidents = _ClientBlockFails(where)
        rt = dc_replace(rt, incidents=incidents)
        disarm = lambda: setattr(incidents, "where", "")  # noqa: E731
    elif where == "hello":
        helo = _Unprintable()
    elif where == "envrcpt":

        class RefusingList(list):
            def append(self, value: object) -> None:
                raise RuntimeError("rcpt")

        class RecipientFails(adapter.Transaction):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                self.recipients = RefusingList()

        monkeypatch.setattr(adapter, "Transaction", RecipientFails)
    elif where == "header":
        monkeypatch.setattr(buffer.MessageBuffer, "add_headers", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    elif where == "body":
        monkeypatch.setattr(buffer.MessageBuffer, "add_body", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    elif where == "eom":
        monkeypatch.setattr(buffer.MessageBuffer, "source", lambda *a: (_ for _ in ()).throw(OSError("gone")))
    return rt, helo, disarm


@pytest.mark.parametrize("where", ["connect", "hello", "envfrom", "envrcpt", "header", "body", "eom"])
def test_a_failure_in_any_callback_ends_in_on_error(tmp_path, monkeypatch, where, milter_runtime):
    """Fail closed: no callback failure lets a message through unchecked, and a connect
    or HELO failure covers every later message of that connection."""
    scanned = []
    base = milter_runtime(
        tmp_path, '[policy.outbound]\non_error = "accept"\n', scan=lambda raw, env: scanned.append(env) or Evidence()
    )
    rt, helo, disarm = _inject(where, monkeypatch, base)
    client = MilterClient(rt, monkeypatch)
    rc, ctx = client.connect(helo=helo)
    assert rc == Milter.CONTINUE
    rc = client.send(ctx, message()[1], "sender@example.org")
    assert rc == Milter.TEMPFAIL  # inbound on_error, never accept
    assert ctx.reply[0] == "451" and not INTERNALS.search(ctx.reply[2])
    assert scanned == []  # nothing was accepted unchecked
    disarm()
    client = MilterClient(rt, monkeypatch)  # the undo also took the client's set-up
    rc = client.send(ctx, message()[1], "sender@example.org")
    if where in ("connect", "hello"):
        assert rc == Milter.TEMPFAIL and scanned == []  # the whole connection stays failed
    else:
        assert rc == Milter.ACCEPT and len(scanned) == 1  # the next message starts clean
    assert list(rt.spool_dir.iterdir()) == []


def test_a_callback_failure_is_logged_with_the_connection_and_queue_id(
    tmp_path, monkeypatch, milter_runtime, log_lines
):
    """No call site passes the IDs: the callback's log context puts them on the error and the summary line."""
    rt, _, _ = _inject("header", monkeypatch, milter_runtime(tmp_path))
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect()
    assert client.send(ctx, message()[1]) == Milter.TEMPFAIL
    [failed] = [d for d in log_lines.docs if d["message"] == "internal error in header callback"]
    [summary] = [d for d in log_lines.docs if d.get("event", {}).get("action") == "tempfail"]
    assert failed["email"]["local_id"] == summary["email"]["local_id"] == QUEUE_ID
    assert failed["labels"]["connection_id"] == summary["labels"]["connection_id"] != ""


def test_a_connection_failure_uses_the_outbound_on_error(tmp_path, monkeypatch, milter_runtime):
    """The failure verdict is the message's own direction's on_error (here outbound: accept)."""
    base = milter_runtime(tmp_path, '[policy.outbound]\non_error = "accept"\n')
    rt, _, _ = _inject("connect", monkeypatch, base)
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(auth="alice")
    rc = client.send(ctx, message()[1], "alice@example.org")
    assert rc == Milter.ACCEPT


def test_a_retired_runtime_closes_when_its_last_message_ends(tmp_path, milter_runtime):
    closed = []

    class Store:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    first = milter_runtime(tmp_path)
    from dataclasses import replace as dc_replace

    old, new = dc_replace(first, owned=(Store("old"),)), dc_replace(first, owned=(Store("new"),))
    live = LiveRuntime(old)
    leased = live.acquire()
    live.swap(new)
    assert closed == [] and live.current is new
    live.release(leased)
    assert closed == ["old"]
    live.swap(dc_replace(first, owned=(Store("newer"),)))  # nothing holds "new": closed at once
    assert closed == ["old", "new"]


SPAM_TAGGED = '[policy.inbound]\nspam_action = "tag"\n[headers]\nsubject_tag = "[SPAM] "\n'


@pytest.mark.parametrize(
    "subject,expected",
    [
        (b"Special offer", " [SPAM] Special offer"),
        (b"[SPAM] Special offer", None),  # already tagged: left as it is
        (b"Sp\xe9cial offer", None),  # raw 8-bit: keeps its bytes
    ],
)
def test_subject_tag(tmp_path, feed, subject, expected, milter_runtime):
    raw = gtube_message()[1].replace(b"Subject: Special offer", b"Subject: " + subject, 1)
    rc, ctx = feed(milter_runtime(tmp_path, SPAM_TAGGED), raw)
    assert rc == Milter.ACCEPT
    assert ctx.delivered["X-Spam-Flag"] == " YES"
    subjects = ctx.delivered.get_all("Subject")  # TestCtx's chgheader appends the new value
    if expected is None:
        assert len(subjects) == 1
    else:
        assert subjects[-1] == expected


def test_subject_tag_adds_a_missing_subject(tmp_path, feed, milter_runtime):
    raw = gtube_message()[1].replace(b"Subject: Special offer\r\n", b"", 1)
    rc, ctx = feed(milter_runtime(tmp_path, SPAM_TAGGED), raw)
    assert rc == Milter.ACCEPT and ctx.delivered["Subject"] == " [SPAM]"


def test_callbacks_out_of_order_end_in_on_error(tmp_path, monkeypatch, milter_runtime):
    """A recipient, header or body with no MAIL FROM before it (an MTA out of step) is a
    failure answered with on_error at end of message, never a message scanned half-seen."""
    scanned = []
    rt = milter_runtime(tmp_path, scan=lambda raw, env: scanned.append(env) or Evidence())
    client = MilterClient(rt, monkeypatch)
    rc, ctx = client.connect()
    assert rc == Milter.CONTINUE
    ctx.send_rcpt("<user@example.test>")
    ctx.send_header("Subject", "no envelope")
    assert ctx.send_eom() == Milter.TEMPFAIL
    assert ctx.reply[0] == "451" and not INTERNALS.search(ctx.reply[2])
    assert scanned == [] and list(rt.spool_dir.iterdir()) == []


def test_a_failure_while_deciding_a_failure_still_tempfails(tmp_path, monkeypatch, milter_runtime):
    """The last resort: if even the on_error outcome cannot be had, the message is tempfailed generically."""
    from mailward.screening import Screener

    rt, _, _ = _inject("header", monkeypatch, milter_runtime(tmp_path, '[policy.inbound]\non_error = "accept"\n'))
    monkeypatch.setattr(Screener, "failure", lambda *a: (_ for _ in ()).throw(RuntimeError("settings gone")))
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect()
    assert client.send(ctx, message()[1]) == Milter.TEMPFAIL
    assert ctx.reply[0] == "451" and not INTERNALS.search(ctx.reply[2])


def test_a_header_block_past_the_spool_threshold_keeps_its_order_subject_and_forgeries(tmp_path, feed, milter_runtime):
    """Header fields are kept per callback and moved to the buffer once they outgrow the spool
    threshold: fields on both sides of that move keep their order, the Subject found after it is
    tagged, and a forged X-Mailward-Verdict after it is replaced."""
    inner = InProcessScanner.from_settings(settings_for(tmp_path / "scanner"))
    seen = []

    def spy(source, env):
        seen.append((source.is_spooled, source.read()))
        return inner.scan(source, env)

    raw = gtube_message()[1]
    head, body = raw.split(b"\r\n\r\n", 1)
    subject = next(line for line in head.split(b"\r\n") if line.startswith(b"Subject:"))
    head = head.replace(subject + b"\r\n", b"")
    traces = b"".join(b"X-Trace-%d: %s\r\n" % (i, b"v" * 60) for i in range(60))  # ~4 kB
    raw = head + b"\r\n" + traces + subject + b"\r\nX-Mailward-Verdict: accept-forged\r\n\r\n" + body
    rt = replace(milter_runtime(tmp_path, SPAM_TAGGED, scan=spy), spool_threshold=1024)
    rc, ctx = feed(rt, raw)
    assert rc == Milter.ACCEPT
    spooled, scanned = seen[0]
    assert spooled
    scanned_head = scanned.split(b"\r\n\r\n", 1)[0]
    tail = traces + subject + b"\r\nX-Mailward-Verdict: accept-forged"
    assert scanned_head.endswith(tail.replace(b": ", b":"))  # the harness does not send the leading space
    assert ctx.delivered.get_all("X-Mailward-Verdict") == [" tag"]
    assert ctx.delivered.get_all("Subject")[-1] == " [SPAM] Special offer"


@pytest.mark.parametrize(
    "forged",
    [
        "mx.dest.test; dmarc=pass header.from=victim.test",
        "(a (nested) comment) mx.dest.test; dmarc=pass header.from=victim.test",
        "(x \\) y) mx.dest.test; dmarc=pass header.from=victim.test",
    ],
)
def test_authentication_results_forged_in_our_name_are_removed_whatever_the_comments(
    tmp_path, feed, milter_runtime, forged
):
    """RFC 8601 5: such fields are deleted; comments nest and hold quoted-pairs (RFC 5322 3.2.2)."""
    theirs = "mx.other.test; spf=pass smtp.mailfrom=victim.test"
    raw = f"Authentication-Results: {forged}\r\nAuthentication-Results: {theirs}\r\n".encode() + message()[1]
    rt = milter_runtime(tmp_path, 'authserv_id = "mx.dest.test"', scan=lambda source, env: Evidence())
    rc, ctx = feed(rt, raw)
    assert rc == Milter.ACCEPT
    assert [(n.lower(), i, v) for n, i, v in ctx.changed if n.lower() == "authentication-results"] == [
        ("authentication-results", 1, "")
    ]  # the first field, not ours that follows


def test_the_header_block_ends_every_line_in_crlf_however_the_mta_folded(tmp_path):
    """Postfix folds a value with a bare LF, another MTA or a harness with CRLF; a lone CR is content."""
    buf = MessageBuffer(1 << 20, tmp_path)
    buf.add_headers([("Received", b" from a\n\tby b"), ("X-Crlf", b" one\r\n two"), ("X-Cr", b" a\rb"), ("To", b" u")])
    buf.end_headers()
    assert buf.source().read() == (b"Received: from a\r\n\tby b\r\nX-Crlf: one\r\n two\r\nX-Cr: a\rb\r\nTo: u\r\n\r\n")
    plain = MessageBuffer(1 << 20, tmp_path)
    plain.add_headers([("Subject", b" hi"), ("From", b" a@example.org")])
    assert plain.source().read() == b"Subject: hi\r\nFrom: a@example.org\r\n" and plain.size == 34


# What line ends are made of, and bytes beside them.
LINE_BYTES = [b"\r", b"\n", b"\r\n", b"\n\t", b" ", b"a", b"\xff", b"\x00"]
VALUES = st.lists(st.sampled_from(LINE_BYTES), max_size=20).map(lambda v: b" " + b"".join(v))


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), VALUES),
        max_size=12,
    )
)
def test_any_header_block_is_kept_whole_with_crlf_lines(fields):
    """Hostile names (non-ASCII, surrogates) and values (bare CR and LF anywhere): the block is written,
    every LF is part of a CRLF, and nothing but line ends and unencodable name characters changes."""
    buf = MessageBuffer(1 << 20, Path(tempfile.gettempdir()))
    buf.add_headers(fields)
    block = buf.source().read()
    assert block.count(b"\n") == block.count(b"\r\n") and buf.size == len(block)
    expected = b"".join(b"%s:%s\n" % (n.encode("ascii", "replace"), v) for n, v in fields)
    assert block.replace(b"\r\n", b"\n") == expected.replace(b"\r\n", b"\n")
