"""Release through a real SMTP receiver on loopback, on both backends; the release mark and its verifier."""

from __future__ import annotations

import os
import stat
import threading

from mailward.actor import Actor
from mailward.config import LimitSettings, load_settings
from mailward.evidence import ALERT_HEADER, RELEASE_HEADER
from mailward.marks import alert_mark, key_path, load_release_key, release_mark
from mailward.message import parse_message
from mailward.pipeline import mark_proof
from mailward.quarantine import Status
from mailward.quarantine.release import Relay, ReleaseOutcome, ReleaseVerifier, release
from mailward.source import MessageSource
from support.mail import plain_mail as message
from support.quarantine import SmtpSink, closed_port, envelope, malware_case, spam_case

KEY = b"k" * 32
ANALYST = Actor("analyst1", "review-host")


def relay_for(sink: SmtpSink) -> Relay:
    return Relay("127.0.0.1", sink.port, 10.0)


def header_value(raw: bytes) -> str:
    head = raw.split(b"\r\n", 1)[0].decode()
    name, _, value = head.partition(": ")
    assert name == RELEASE_HEADER
    return value


def proof_of(raw: bytes):
    """The marks a scanning worker reports for ``raw`` (it parses the message first)."""
    return mark_proof(parse_message(raw, LimitSettings()))


def test_release_delivers_original_bytes_to_original_recipients(store, smtp_sink, clock, tmp_path):
    raw = message("Quarterly report", body=b"line one\r\nline two\r\n.leading dot\r\n")
    v, e = spam_case()
    env = envelope(sender="alice@example.org", recipients=("bob@example.net", "carol@example.net"))
    qid = store.put(MessageSource.of(raw), env, v, e)

    result = release(store, qid, ANALYST, relay_for(smtp_sink), KEY, clock=clock)

    assert result.outcome is ReleaseOutcome.RELEASED
    [(sender, rcpts, data)] = smtp_sink.received
    assert sender == "alice@example.org" and rcpts == ("bob@example.net", "carol@example.net")
    mark = header_value(data)
    assert data.split(b"\r\n", 1)[1] == raw  # the original bytes follow, unchanged
    verified = ReleaseVerifier(KEY, 86400, clock=clock).verify(mark, data, rcpts)
    assert verified is not None and verified.quarantine_id == qid
    assert store.get(qid).status is Status.RELEASED
    assert [ev.action for ev in store.history(qid)][-2:] == ["release-claim", "release"]
    relayed = b"Received: from relay by mx\r\n" + data.replace(b"\r\n", b"\n")  # as an MTA passes it on
    checker = ReleaseVerifier(KEY, 86400, store, clock)
    assert proof_of(raw) is None
    assert checker.accept(proof_of(relayed.replace(b"line two", b"line 2")), env) is None  # other content
    assert checker.accept(proof_of(relayed), envelope(recipients=("eve@example.net",))) is None  # other rcpts
    assert checker.accept(proof_of(relayed), envelope(recipients=("bob@example.net", "eve@example.net"))) is None
    assert checker.accept(proof_of(relayed), envelope(recipients=("bob@example.net",))).quarantine_id == qid
    assert checker.accept(proof_of(relayed), env) is None  # used once: a replay is refused
    assert [ev.action for ev in store.history(qid)][-1] == "release-mark-used"
    assert release(store, qid, ANALYST, relay_for(smtp_sink), KEY).outcome is ReleaseOutcome.ALREADY_RELEASED
    assert len(smtp_sink.received) == 1


def test_malware_needs_force(store, smtp_sink):
    v, e = malware_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    assert release(store, qid, ANALYST, relay_for(smtp_sink), KEY).outcome is ReleaseOutcome.NEEDS_FORCE
    assert smtp_sink.received == []
    assert release(store, qid, ANALYST, relay_for(smtp_sink), KEY, force=True).outcome is ReleaseOutcome.RELEASED
    assert store.history(qid)[-2].detail == "forced"


def test_relay_down_keeps_the_message_and_a_retry_works(store):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    failed = release(store, qid, ANALYST, Relay("127.0.0.1", closed_port(), 5.0), KEY)
    assert failed.outcome is ReleaseOutcome.FAILED
    assert store.get(qid).status is Status.HELD
    assert store.history(qid)[-1].action == "release-failed"
    with SmtpSink() as sink:
        assert release(store, qid, ANALYST, relay_for(sink), KEY).outcome is ReleaseOutcome.RELEASED
        assert len(sink.received) == 1


def test_refused_recipients(store):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(recipients=("bob@example.net", "gone@example.net")), v, e)
    with SmtpSink(refuse=("gone@example.net",)) as sink:
        result = release(store, qid, ANALYST, relay_for(sink), KEY)
        assert result.outcome is ReleaseOutcome.RELEASED and result.refused == ("gone@example.net",)
        assert sink.received[0][1] == ("bob@example.net",)
    assert "refused: gone@example.net" in store.history(qid)[-1].detail

    v2, e2 = spam_case()
    all_gone = store.put(MessageSource.of(message()), envelope(recipients=("gone@example.net",)), v2, e2)
    with SmtpSink(refuse=("gone@example.net",)) as sink:
        result = release(store, all_gone, ANALYST, relay_for(sink), KEY)
    assert result.outcome is ReleaseOutcome.FAILED and "all recipients refused" in result.detail
    assert store.get(all_gone).status is Status.HELD


def test_concurrent_releases_deliver_once(store, smtp_sink):
    ids = []
    for i in range(5):
        v, e = spam_case()
        ids.append(store.put(MessageSource.of(message(f"m{i}")), envelope(), v, e))
    barrier = threading.Barrier(6)
    outcomes = []

    def releaser(n: int) -> None:
        barrier.wait()
        for qid in ids:
            outcomes.append(release(store, qid, Actor(f"a{n}", "h"), relay_for(smtp_sink), KEY).outcome)

    threads = [threading.Thread(target=releaser, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(ReleaseOutcome.RELEASED) == len(ids)
    assert set(outcomes) <= {ReleaseOutcome.RELEASED, ReleaseOutcome.IN_PROGRESS, ReleaseOutcome.ALREADY_RELEASED}
    subjects = sorted(data.split(b"Subject: ")[1].split(b"\r\n")[0] for _, _, data in smtp_sink.received)
    assert subjects == sorted(f"m{i}".encode() for i in range(5))


def test_verifier_rejects_forgeries_and_old_marks(clock):
    raw = b"Subject: x\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nHello\r\nworld\r\n"
    rcpts = ("bob@example.net", "carol@example.net")
    mark = release_mark(KEY, "MW-1", raw, rcpts, clock())
    verifier = ReleaseVerifier(KEY, 3600, clock=clock)
    assert verifier.verify(mark, raw, rcpts).quarantine_id == "MW-1"
    assert verifier.verify(mark, raw, reversed(rcpts)) is not None  # recipient order does not matter
    in_transit = b"Received: by mx\nSubject: x\nContent-Type: text/plain; charset=utf-8\n\nHello\nworld\n"
    assert verifier.verify(mark, in_transit, rcpts) is not None  # line ends, folding and added fields
    assert verifier.verify(mark, raw.replace(b"world", b"w0rld"), rcpts) is None  # other content
    assert verifier.verify(mark, raw.replace(b"Hello\r\n", b"Hel\r\nlo\r\n"), rcpts) is None  # lines re-cut
    retyped = raw.replace(b"Subject: x", b"Subject: x\r\nContent-Type: multipart/mixed; boundary=world")
    assert verifier.verify(mark, retyped, rcpts) is None  # the same lines read as other parts
    assert verifier.verify(mark, raw, ("eve@example.net",)) is None  # other recipients
    assert ReleaseVerifier(b"x" * 32, 3600, clock=clock).verify(mark, raw, rcpts) is None  # other key
    forged = mark.replace("MW-1", "MW-2", 1)
    assert verifier.verify(forged, raw, rcpts) is None  # mark moved to another ID
    for junk in ("", "MW-1", "MW-1 notatime sig", "a b c d"):
        assert verifier.verify(junk, raw, rcpts) is None
    alert = alert_mark(KEY, "MW-1", raw, rcpts, clock())
    assert verifier.verify(alert, raw, rcpts) is None  # an alert mark releases nothing
    proof = proof_of(f"{ALERT_HEADER}: {alert}\r\n".encode() + raw)
    assert verifier.accept(proof, envelope(recipients=rcpts)).kind == "alert"
    assert verifier.accept(proof, envelope(recipients=rcpts[:1])) is None
    assert (
        verifier.accept(proof_of(f"{ALERT_HEADER}: {alert}\r\n".encode() + retyped), envelope(recipients=rcpts)) is None
    )
    clock.now += 3601
    assert verifier.verify(mark, raw, rcpts) is None  # expired
    assert verifier.accept(proof, envelope(recipients=rcpts)) is None


def test_release_key_is_created_private_once(tmp_path):
    settings = load_settings(overrides={"state_dir": str(tmp_path)})
    path = key_path(settings)
    key = load_release_key(path)
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_release_key(path) == key
    assert (
        ReleaseVerifier.from_settings(settings).verify(release_mark(key, "MW-1", b"b", ["r"], 0), b"b", ["r"]) is None
    )  # 1970


def test_workers_starting_together_share_one_whole_release_key(tmp_path):
    """Every scanning worker loads the key as it starts; on a new host they all find it missing at once.
    Before, one could read the file another had just created and not yet written ("shorter than 16 bytes")."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # fast to start, so the loads meet; the children use no threads
    for attempt in range(60):
        start, results = ctx.Barrier(6), ctx.SimpleQueue()
        path = tmp_path / f"host-{attempt}" / "release.key"
        loaders = [ctx.Process(target=_load_together, args=(path, start, results)) for _ in range(6)]
        for loader in loaders:
            loader.start()
        keys = {results.get() for _ in loaders}
        for loader in loaders:
            loader.join(10)
        assert keys == {path.read_bytes()} and len(path.read_bytes()) == 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and os.listdir(path.parent) == ["release.key"]


def test_root_cli_and_service_user_milter_creating_the_key_together_share_one_it_can_read(service_user):
    """An admin's first `mailward release` (root) racing the milter's workers (the service user) on a new host.

    Whoever wins, the key the milter reads is the one the CLI signs with, and it is the service
    user's: root's file is handed over before it appears, so no worker ever meets a root-owned
    0600 key it cannot open (PermissionError at start)."""
    import multiprocessing
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="mailward-key-race-", dir="/tmp"))  # not under root's 0700 pytest dir
    base.chmod(0o711)
    ctx = multiprocessing.get_context("fork")
    try:
        for attempt in range(40):
            host = base / f"host-{attempt}"
            host.mkdir(mode=0o700)
            os.chown(host, service_user.pw_uid, service_user.pw_gid)  # the state dir, as deployed
            path = host / "release.key"
            start, results = ctx.Barrier(6), ctx.SimpleQueue()
            loaders = [
                ctx.Process(target=_load_together, args=(path, start, results, service_user if n % 2 else None))
                for n in range(6)
            ]
            for loader in loaders:
                loader.start()
            keys = {results.get() for _ in loaders}
            for loader in loaders:
                loader.join(10)
            info = path.stat()
            assert keys == {path.read_bytes()} and len(path.read_bytes()) == 32, keys
            assert (info.st_uid, info.st_gid) == (service_user.pw_uid, service_user.pw_gid)
            assert stat.S_IMODE(info.st_mode) == 0o600 and os.listdir(host) == ["release.key"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _load_together(path, start, results, user=None) -> None:
    if user is not None:  # a worker of the milter, which runs as the service user
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    start.wait()
    try:
        results.put(load_release_key(path))
    except Exception as exc:
        results.put(repr(exc).encode())
