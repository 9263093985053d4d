"""The store contract: every test runs against SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest

from mailward.actor import Actor
from mailward.envelope import Direction
from mailward.errors import StoreError
from mailward.evidence import Category, Evidence, Finding, Label, MessageFacts, Severity
from mailward.quarantine import ListFilter, ReleaseClaim, Removal, Status
from mailward.source import MessageSource
from mailward.verdict import Action, Verdict, new_incident_id
from support.mail import plain_mail as message
from support.quarantine import envelope, malware_case, spam_case

ANALYST = Actor("analyst1", "review-host", "ssh 192.0.2.50")


def test_put_keeps_exact_bytes_and_every_field(store, clock):
    raw = message("Cheap \x1b[31mpills", body=b"caf\xe9 8-bit body\r\n.\r\nno final newline")
    verdict, evidence = spam_case(0.97)
    env = envelope(recipients=("bob@example.net", "carol@example.net"))
    qid = store.put(MessageSource.of(raw), env, verdict, evidence)

    assert qid == verdict.incident_id
    assert store.read(qid) == raw
    rec = store.get(qid)
    assert rec.envelope == env
    assert rec.direction is Direction.INBOUND
    assert rec.action == "quarantine" and rec.reasons == ("spam",)
    assert rec.evidence.findings == evidence.findings
    assert rec.evidence.findings[0].location == "part 1"
    assert rec.spam_score == pytest.approx(0.97)
    assert [(c.token, c.weight) for c in rec.evidence.spam.clues] == [("viagra", 2.5), ("meeting", -1.25)]
    assert rec.size == len(raw)
    import hashlib

    assert rec.sha256 == hashlib.sha256(raw).hexdigest()
    assert rec.subject == "Cheap \x1b[31mpills"
    assert "alice@example.org" in rec.header_from
    assert rec.received_at == clock.now
    assert rec.status is Status.HELD and rec.label is None
    assert [e.action for e in store.history(qid)] == ["quarantine"]


def test_text_filters_ignore_case_beyond_ascii(store, clock):
    """SQL lowers ASCII only: "ärger" found nothing of "Ärger über Rechnung", on both backends."""
    verdict, evidence = spam_case()
    ids = []
    for subject, sender in (
        ("Ärger über Rechnung", "Jürgen@Bäcker.test"),
        ("Ärgern", "a@b.test"),
        ("Xrger", "x@y.test"),
    ):
        clock.now += 1
        facts = MessageFacts(subject=subject, header_from=sender)
        v = replace(verdict, incident_id=new_incident_id())
        ids.append(
            store.put(
                MessageSource.of(message(subject)),
                envelope(sender=sender),
                v,
                Evidence(evidence.findings, evidence.spam, message=facts),
            )
        )
    found = lambda **kw: sorted(r.id for r in store.list(ListFilter(**kw)))  # noqa: E731
    assert found(subject="ärger über") == [ids[0]]
    assert found(subject="ÄRGER") == sorted(ids[:2])  # not "Xrger": the wildcard SQL needed is checked again
    assert found(sender="jürgen@bäcker") == [ids[0]]
    assert found(subject="ärger", limit=1) == [ids[1]]  # newest first, the limit after the check


def test_a_unicode_search_reads_page_after_page_once(store, clock, monkeypatch):
    """Searches SQL cannot decide read the rows a page at a time, after the last row seen: OFFSET
    paging returned a record twice when one arrived between pages, and rescanned every page."""
    import mailward.quarantine.store as store_module

    monkeypatch.setattr(store_module, "_SCAN_PAGE", 2)
    verdict, evidence = spam_case()
    subjects = ["İstanbul trip", "other", "Kelvin \u212a scale", "İSTANBUL again", "x", "y", "istanbul last"]
    ids = []
    for subject in subjects:
        clock.now += 1
        v = replace(verdict, incident_id=new_incident_id())
        facts = MessageFacts(subject=subject, header_from="a@example.org")
        ids.append(
            store.put(
                MessageSource.of(message(subject)),
                envelope(),
                v,
                Evidence(evidence.findings, evidence.spam, message=facts),
            )
        )
    found = lambda **kw: [r.id for r in store.list(ListFilter(**kw))]  # noqa: E731
    assert found(subject="İstanbul") == [ids[3], ids[0]]  # the exact spelling too; newest first
    assert found(subject="\u212a") == [ids[2]]  # the Kelvin sign, whose lower case is ASCII
    assert found(subject="İstanbul", limit=1) == [ids[3]]


def test_the_listing_takes_subject_and_from_from_the_scanning_worker(store):
    """The milter process never parses the message: what the worker read is what the listing shows."""
    verdict, evidence = spam_case()
    facts = MessageFacts(subject="Read by the worker", header_from="worker@example.org")
    qid = store.put(
        MessageSource.of(message("Not parsed again")),
        envelope(),
        verdict,
        Evidence(evidence.findings, evidence.spam, message=facts),
    )
    assert (store.get(qid).subject, store.get(qid).header_from) == ("Read by the worker", "worker@example.org")


def test_put_from_spooled_file(store, tmp_path):
    raw = message(body=b"x" * (3 * 1024 * 1024 + 17))
    spool = tmp_path / "spool"
    spool.write_bytes(raw)
    verdict, evidence = malware_case()
    qid = store.put(MessageSource.spooled(spool, len(raw)), envelope(direction=Direction.OUTBOUND), verdict, evidence)
    assert store.read(qid) == raw
    assert store.get(qid).size == len(raw)
    assert store.get(qid).direction is Direction.OUTBOUND


def test_failed_put_leaves_nothing(store, store_factory, tmp_path):
    verdict, evidence = spam_case()
    with pytest.raises(StoreError):
        store.put(MessageSource.spooled(tmp_path / "missing-spool", 1), envelope(), verdict, evidence)
    assert store.get(verdict.incident_id) is None

    # The row fails after the bytes were written: an unserialisable detail reaches json.dumps.
    bad = Evidence(findings=(Finding(Category.SPAM, "x", Severity.HIGH, "t", "", object()),))
    verdict2 = Verdict(Action.QUARANTINE, ("spam",), new_incident_id())
    with pytest.raises(StoreError):
        store.put(MessageSource.of(message()), envelope(), verdict2, bad)
    assert store.get(verdict2.incident_id) is None
    with pytest.raises(StoreError):
        store.read(verdict2.incident_id)
    if store_factory.backend == "sqlite":
        assert sorted(os.listdir(store_factory.directory / "messages")) == []


def test_duplicate_id_is_refused_and_the_first_copy_survives(store):
    verdict, evidence = spam_case()
    first = message("first")
    store.put(MessageSource.of(first), envelope(), verdict, evidence)
    with pytest.raises(StoreError):
        store.put(MessageSource.of(message("second")), envelope(), verdict, evidence)
    assert store.read(verdict.incident_id) == first
    assert store.get(verdict.incident_id).subject == "first"


def test_ids_that_look_like_paths_are_refused(store):
    for bad in ("../etc/passwd", "a/b", "", ".hidden"):
        with pytest.raises(StoreError):
            store.get(bad)
    verdict = Verdict(Action.QUARANTINE, ("spam",), "../../escape")
    with pytest.raises(StoreError):
        store.put(MessageSource.of(message()), envelope(), verdict, Evidence())


def test_list_filters(store, clock):
    t0 = clock.now
    v1, e1 = spam_case()
    store.put(MessageSource.of(message("Weekly offer")), envelope(sender="promo@shop.test"), v1, e1)
    clock.now = t0 + 3600
    v2, e2 = malware_case()
    store.put(
        MessageSource.of(message("Invoice 42")),
        envelope(sender="billing@corp.test", recipients=("eve@example.net",), direction=Direction.OUTBOUND),
        v2,
        e2,
    )
    ids = lambda **kw: [r.id for r in store.list(ListFilter(**kw))]  # noqa: E731

    assert ids() == [v2.incident_id, v1.incident_id]  # newest first
    assert ids(direction=Direction.OUTBOUND) == [v2.incident_id]
    assert ids(reason="malware") == [v2.incident_id]
    assert ids(reason="MALWARE") == [v2.incident_id]
    assert ids(reason="mal") == []  # reasons match whole
    assert ids(sender="PROMO@") == [v1.incident_id]
    assert ids(recipient="eve@") == [v2.incident_id]
    assert ids(subject="offer") == [v1.incident_id]
    assert ids(subject="100%") == []  # wildcards in user text are literal
    assert ids(subject="_") == []
    assert ids(action="quarantine", since=t0 + 1) == [v2.incident_id]
    assert ids(until=t0 + 1) == [v1.incident_id]
    assert ids(status=Status.RELEASED) == []
    assert ids(limit=1) == [v2.incident_id]


def test_release_claim_is_exclusive_and_malware_needs_force(store, clock):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.CLAIMED
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.IN_PROGRESS
    assert store.delete(qid, ANALYST) is Removal.IN_PROGRESS
    store.finish_release(qid, ANALYST, delivered=False, detail="relay down")
    assert store.get(qid).status is Status.HELD
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.CLAIMED
    clock.now += 5
    store.finish_release(qid, ANALYST, delivered=True, detail="2 recipients")
    rec = store.get(qid)
    assert rec.status is Status.RELEASED and rec.released_at == clock.now
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.ALREADY_RELEASED
    assert store.claim_release("MW-NOPE", ANALYST) is ReleaseClaim.NOT_FOUND

    mv, me = malware_case()
    mid = store.put(MessageSource.of(message()), envelope(), mv, me)
    assert store.claim_release(mid, ANALYST) is ReleaseClaim.NEEDS_FORCE
    assert store.get(mid).status is Status.HELD
    assert store.claim_release(mid, ANALYST, force=True) is ReleaseClaim.CLAIMED

    actions = [(ev.action, ev.detail) for ev in store.history(qid)]
    assert actions == [
        ("quarantine", "quarantine: spam; queue 4ABC123"),
        ("release-claim", ""),
        ("release-failed", "relay down"),
        ("release-claim", ""),
        ("release", "2 recipients"),
    ]


def test_stale_claim_can_be_reclaimed_only_after_the_timeout(store, clock):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.CLAIMED
    clock.now += 60
    assert store.claim_release(qid, ANALYST, reclaim_after=120) is ReleaseClaim.IN_PROGRESS
    clock.now += 61
    assert store.claim_release(qid, ANALYST, reclaim_after=120) is ReleaseClaim.CLAIMED


def test_delete_removes_message_but_keeps_history(store, store_factory):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    assert store.delete(qid, ANALYST) is Removal.DELETED
    assert store.get(qid) is None
    with pytest.raises(StoreError):
        store.read(qid)
    assert store.delete(qid, ANALYST) is Removal.NOT_FOUND
    events = store.history(qid)
    assert [ev.action for ev in events] == ["quarantine", "delete"]
    assert (events[1].actor.name, events[1].actor.host, events[1].actor.origin) == (
        "analyst1",
        "review-host",
        "ssh 192.0.2.50",
    )
    if store_factory.backend == "sqlite":
        assert not (store_factory.directory / "messages" / f"{qid}.eml").exists()


def test_a_delete_never_removes_a_record_whose_release_another_host_claimed(fresh_pg_dsn, monkeypatch):
    """History release-claim (B), delete (A), release (B): the claim lands between A's look and A's delete."""
    from mailward.db import Transaction
    from mailward.quarantine.postgres import PostgresStore

    host_a, host_b = PostgresStore(fresh_pg_dsn), PostgresStore(fresh_pg_dsn)
    try:
        v, e = spam_case()
        qid = host_a.put(MessageSource.of(message()), envelope(), v, e)
        execute, claims = Transaction.execute, []

        def claim_first(tx, statement, params=(), **kwargs):
            if statement.startswith("DELETE FROM quarantine WHERE") and not claims:
                claims.append(host_b.claim_release(qid, Actor("b", "host-b", "cli")))
            return execute(tx, statement, params, **kwargs)

        monkeypatch.setattr(Transaction, "execute", claim_first)
        assert host_a.delete(qid, ANALYST) is Removal.IN_PROGRESS
        assert claims == [ReleaseClaim.CLAIMED]
        assert host_b.get(qid).status is Status.RELEASING
        assert [ev.action for ev in host_b.history(qid)] == ["quarantine", "release-claim"]
    finally:
        host_a.close()
        host_b.close()


def test_a_subject_decoding_to_nul_is_quarantined_alike_on_both_backends(store):
    """PostgreSQL refuses NUL in text; read from the message (no scan facts) the subject still decodes to one."""
    v, e = spam_case()
    qid = store.put(MessageSource.of(message("=?utf-8?q?invoice=00?=")), envelope(), v, e)
    assert store.get(qid).subject == "invoice\ufffd"
    assert [r.id for r in store.list(ListFilter(subject="invoice"))] == [qid]


def test_labels_form_an_ordered_ledger(store):
    v1, e1 = spam_case()
    v2, e2 = spam_case()
    a = store.put(MessageSource.of(message("a")), envelope(), v1, e1)
    b = store.put(MessageSource.of(message("b")), envelope(), v2, e2)
    assert store.record_label(a, Label.SPAM, ANALYST)
    assert store.record_label(b, Label.HAM, ANALYST)
    assert store.record_label(a, Label.HAM, ANALYST)  # a correction is appended, not rewritten
    assert not store.record_label("MW-NOPE", Label.HAM, ANALYST)
    ledger = store.labels_since(0)
    assert [(r.quarantine_id, r.label) for r in ledger] == [(a, Label.SPAM), (b, Label.HAM), (a, Label.HAM)]
    assert ledger[0].sha256 == store.get(a).sha256 and ledger[0].actor == "analyst1"
    assert [r.quarantine_id for r in store.labels_since(ledger[1].seq)] == [a]
    assert store.get(a).label is Label.HAM


def test_purge_removes_only_old_records(store, clock):
    v1, e1 = spam_case()
    old = store.put(MessageSource.of(message("old")), envelope(), v1, e1)
    clock.now += 10 * 86400
    v2, e2 = spam_case()
    new = store.put(MessageSource.of(message("new")), envelope(), v2, e2)
    clock.now += 1
    assert store.purge(5, ANALYST) == [old]
    assert store.get(old) is None and store.get(new) is not None
    assert store.history(old)[-1].action == "purge"
    assert store.purge(5, ANALYST) == []


def test_record_event_adds_to_history(store):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    store.record_event(qid, "export", ANALYST, "to /tmp/x.eml")
    assert store.history(qid)[-1].detail == "to /tmp/x.eml"


def test_second_store_on_same_location_sees_the_same_records(store, store_factory):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    other = store_factory()
    assert other.read(qid) == message()
    assert other.claim_release(qid, ANALYST) is ReleaseClaim.CLAIMED
    assert store.claim_release(qid, ANALYST) is ReleaseClaim.IN_PROGRESS


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_files_are_private(store, store_factory):
    v, e = spam_case()
    qid = store.put(MessageSource.of(message()), envelope(), v, e)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    root = store_factory.directory
    assert mode(root) == 0o700
    assert mode(root / "messages") == 0o700
    assert mode(root / "messages" / f"{qid}.eml") == 0o600
    for name in ("quarantine.sqlite3", "quarantine.sqlite3-wal"):
        assert mode(root / name) == 0o600


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_existing_loose_directory_is_tightened(store_factory):
    store_factory.directory.mkdir(mode=0o755)
    os.chmod(store_factory.directory, 0o755)
    store_factory()
    assert stat.S_IMODE(os.stat(store_factory.directory).st_mode) == 0o700


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_sweep_removes_crash_leftovers_only_when_old(store, store_factory, clock):
    v, e = spam_case()
    kept = store.put(MessageSource.of(message()), envelope(), v, e)
    messages = store_factory.directory / "messages"
    leftovers = [messages / ".tmp-abc", messages / "MW-ORPHAN.eml"]
    for p in leftovers:
        p.write_bytes(b"partial")
        os.utime(p, (clock.now - 7200, clock.now - 7200))
    young = messages / ".tmp-young"
    young.write_bytes(b"in flight")
    os.utime(young, (clock.now, clock.now))
    os.utime(messages / f"{kept}.eml", (clock.now - 7200, clock.now - 7200))
    assert store.sweep() == 2
    assert sorted(p.name for p in messages.iterdir()) == sorted([".tmp-young", f"{kept}.eml"])


def test_a_spooled_message_is_kept_byte_for_byte_in_chunks(store, tmp_path):
    """A large spooled message is streamed into the store (PostgreSQL: 1 MiB rows), never read whole."""
    import hashlib

    raw = message("Large", body=os.urandom(3 * 1024 * 1024 + 12345).hex().encode()[:3_500_000] + b"\r\n")
    spool = tmp_path / "msg.eml"
    spool.write_bytes(raw)
    v, e = spam_case()
    qid = store.put(MessageSource.spooled(spool, len(raw)), envelope(), v, e)
    assert store.read(qid) == raw
    assert store.get(qid).sha256 == hashlib.sha256(raw).hexdigest() and store.get(qid).size == len(raw)
    if store.backend == "postgresql":
        import psycopg

        with psycopg.connect(store.dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM quarantine_chunks WHERE id = %s", (qid,)).fetchone()[0]
        assert rows == 4
    assert store.delete(qid, Actor("a", "h")) is Removal.DELETED
