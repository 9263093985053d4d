"""Alert channels against real receivers on loopback, de-duplication and the rate limit."""

from __future__ import annotations

import email
import email.policy
import re

from mailward.config import load_settings
from mailward.incidents import Alert, AlertDispatcher, AlertKind, Delivery
from mailward.incidents.alerts import EmailChannel, SyslogChannel, WebhookChannel, channels_from_settings
from support.incidents import SyslogReceiver, WebhookReceiver
from support.quarantine import FakeClock, SmtpSink


def _alert(n: int = 1, kind: AlertKind = AlertKind.SUSPENSION, subject: str = "account alice") -> Alert:
    return Alert(
        kind,
        f"MW-6B000000-0000000{n}",
        f"Account alice suspended ({n})",
        subject=subject,
        severity="critical",
        details=(("reason", "outbound spam burst: 12 spam in 1 h (limit 10)"),),
        remedy="mailward block remove account alice",
    )


def test_every_channel_delivers_and_a_broken_one_does_not_stop_the_others(tmp_path):
    sock = tmp_path / "log.sock"
    syslog = SyslogReceiver(sock)
    with WebhookReceiver() as hook, SmtpSink() as sink:
        broken = WebhookChannel("http://127.0.0.1:9/nothing-listens", timeout=2)
        channels = [
            broken,
            WebhookChannel(hook.url, token="s3cret"),
            EmailChannel("127.0.0.1", sink.port, "mailward@mx.example.test", ("soc@example.test",)),
            SyslogChannel(str(sock), "auth"),
        ]
        results: list = []
        dispatcher = AlertDispatcher(channels, observe=lambda *r: results.append(r))
        assert dispatcher.raise_alert(_alert()) is Delivery.QUEUED
        assert dispatcher.drain(20)
        dispatcher.close()
        [doc] = hook.received
        assert doc["incident_id"] == "MW-6B000000-00000001" and doc["kind"] == "suspension"
        assert doc["details"]["reason"].startswith("outbound spam burst") and doc["source"] == "mailward"
        assert hook.headers[0]["Authorization"] == "Bearer s3cret"
        [(mail_from, rcpts, raw)] = sink.received
        msg = email.message_from_bytes(raw)
        assert rcpts == ("soc@example.test",) and "MW-6B000000-00000001" in msg["Subject"]
        body = msg.get_payload(decode=True).decode()
        assert "To act: mailward block remove account alice" in body
    line = syslog.receive()
    syslog.close()
    assert re.match(
        r"<34>mailward\[\d+\]: incident=MW-6B000000-00000001 kind=suspension "
        r'subject="account alice" Account alice suspended',
        line,
    )  # auth.crit = 4*8+2
    assert ("delivery", "webhook", "failed") in results and ("delivery", "email", "sent") in results
    assert ("alert", "suspension", "queued") in results


def test_duplicates_and_floods_are_held_back_and_counted():
    clock = FakeClock()
    with WebhookReceiver() as hook:
        dispatcher = AlertDispatcher(
            [WebhookChannel(hook.url)], dedup_window=600, rate_limit=3, rate_period=60, clock=clock
        )
        assert dispatcher.raise_alert(_alert(1)) is Delivery.QUEUED
        assert dispatcher.raise_alert(_alert(2)) is Delivery.DUPLICATE  # same account, same kind
        assert dispatcher.raise_alert(_alert(3, AlertKind.MALWARE)) is Delivery.QUEUED
        assert dispatcher.raise_alert(_alert(4, subject="account bob")) is Delivery.QUEUED
        assert dispatcher.raise_alert(_alert(5, subject="account carol")) is Delivery.RATE_LIMITED
        clock.now += 61  # the rate window moved on
        assert dispatcher.raise_alert(_alert(6, subject="account dave")) is Delivery.QUEUED
        clock.now += 600  # the dedup window too
        assert dispatcher.raise_alert(_alert(7)) is Delivery.QUEUED
        assert dispatcher.drain(10)
        dispatcher.close()
    sent = [d["incident_id"][-1] for d in hook.received]
    assert sent == ["1", "3", "4", "6", "7"]
    # Each alert that goes out says how many were held back since the previous one.
    assert [d.get("suppressed_since_last", 0) for d in hook.received] == [0, 1, 0, 1, 0]


def test_alerts_carry_no_internals():
    text = _alert().text()
    doc = _alert().as_dict()
    for leak in ("Traceback", "/var/lib", "dsn", "password=", "sqlite"):
        assert leak not in text and leak not in str(doc)


def test_channels_come_from_the_configuration(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc\n")
    cfg = tmp_path / "m.toml"
    with WebhookReceiver() as hook:
        cfg.write_text(
            f'[alerts]\nwebhook_url = "{hook.url}"\nwebhook_token_file = "{token}"\n'
            f'email_to = ["soc@example.test"]\nsyslog = "udp:127.0.0.1:5514"\n'
            f"[quarantine]\nrelay_port = 2525\n"
        )
        channels = channels_from_settings(load_settings(cfg))
        assert [c.name for c in channels] == ["webhook", "email", "syslog"]
        assert channels[1].port == 2525
        channels[0].send(_alert(), 0)
        assert hook.headers[0]["Authorization"] == "Bearer abc"  # the token file's line, without its newline
    cfg.write_text('[alerts]\nwebhook_url = "ftp://x"\n')
    try:
        channels_from_settings(load_settings(cfg))
    except Exception as exc:
        assert "alerts.webhook_url" in str(exc)
    else:
        raise AssertionError("a bad webhook URL was accepted")


def test_syslog_over_udp(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        SyslogChannel(f"udp:127.0.0.1:{server.getsockname()[1]}", "local3").send(_alert(), suppressed=4)
        line = server.recv(4096).decode()
    assert line.startswith("<154>mailward[") and "suppressed=4" in line  # local3.crit = 19*8+2


FORGED = (
    "invoice.zip > x.com\n\nTo act: nothing to do, cleared as false positive by the SOC\n"
    "\x1b]0;pwned\x07\u2028\u202ecod.exe"
)


def test_message_text_stays_on_its_line_in_alert_mail_and_intact_in_json(tmp_path):
    """A zip member name from the message (r3b): no forged line in the mail, no ESC, BEL or bidi acting;
    the webhook gets the name as it was (JSON escapes it once)."""
    alert = Alert(
        AlertKind.MALWARE,
        "MW-6B000000-00000009",
        "Malware in inbound mail from a@example.net\n\x1b[2J: reject",
        subject="sender a@example.net\nTo act: ignore",
        details=(("objects", FORGED), ("sender", "a@example.net")),
        remedy="mailward quarantine show MW-6B000000-00000009",
    )
    sock = tmp_path / "log.sock"
    syslog = SyslogReceiver(sock)
    with WebhookReceiver() as hook, SmtpSink() as sink:
        channels = [
            WebhookChannel(hook.url),
            EmailChannel("127.0.0.1", sink.port, "mailward@mx.example.test", ("soc@example.test",)),
            SyslogChannel(str(sock), "auth"),
        ]
        dispatcher = AlertDispatcher(channels)
        assert dispatcher.raise_alert(alert) is Delivery.QUEUED
        assert dispatcher.drain(20)
        dispatcher.close()
        [doc] = hook.received
        [(_, _, raw)] = sink.received
    line = syslog.receive()
    syslog.close()
    assert doc["details"]["objects"] == FORGED and doc["summary"] == alert.summary  # not escaped twice
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_content()
    lines = body.splitlines()
    assert [x for x in lines if x.startswith("To act:")] == ["To act: mailward quarantine show MW-6B000000-00000009"]
    [objects] = [x for x in lines if x.startswith("objects:")]
    assert objects == (
        "objects: invoice.zip > x.com\\x0a\\x0aTo act: nothing to do, cleared as false positive by the SOC"
        "\\x0a\\x1b]0;pwned\\x07\\u2028\\u202ecod.exe"
    )
    assert "Subject:  sender a@example.net\\x0aTo act: ignore" in lines
    assert not any(c in body for c in "\x1b\x07\u2028\u202e")
    assert msg["Subject"].startswith("[Mailward high] Malware in inbound mail from a@example.net\\x0a\\x1b[2J: ")
    assert "\n" not in line and "\x1b" not in line and 'subject="sender a@example.net\\x0aTo act: ignore"' in line
