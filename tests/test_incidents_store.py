"""The incident store on both backends: sliding-window sums, one active block per subject, expiry, audit."""

from __future__ import annotations

import threading

import pytest

from mailward.actor import Actor
from mailward.config import load_settings
from mailward.incidents import Origin, SubjectKind, Totals, normalise, open_incidents
from mailward.incidents.records import Counter


def test_sums_cover_only_the_window(incident_store):
    store, clock = incident_store(), incident_store.clock
    for _ in range(3):
        store.record(Counter.ACCOUNT, "alice", Totals(messages=1, recipients=5, spam=1), since=None)
        clock.now += 100
    totals = store.record(Counter.ACCOUNT, "alice", Totals(messages=1, recipients=2), since=clock.now - 250)
    assert (totals.messages, totals.recipients, totals.spam) == (3, 12, 2)  # the first event fell out
    other = store.record(Counter.OUTBOUND_HOST, "alice", Totals(messages=1), since=clock.now - 1000)
    assert other.messages == 1  # counters of another kind are separate
    assert store.prune(clock.now - 150) == 2
    assert store.record(Counter.ACCOUNT, "alice", Totals(), since=0).messages == 2


def test_one_active_block_per_subject_and_audit(incident_store):
    store = incident_store()
    first, created = store.add_block(
        SubjectKind.ACCOUNT, "alice", Origin.SUSPENSION, "spam burst", "MW-1", "svc", "mx1"
    )
    assert created and first.active(incident_store.clock.now)
    again, created = store.add_block(SubjectKind.ACCOUNT, "alice", Origin.ANALYST, "other", "MW-2", "ann", "ws")
    assert not created and again.id == first.id and again.incident_id == "MW-1"
    lifted = store.lift(SubjectKind.ACCOUNT, "alice", "ann", "ws", "ssh 192.0.2.1", "password reset")
    assert lifted.lifted_by == "ann" and store.active_blocks() == []
    assert store.lift(SubjectKind.ACCOUNT, "alice", "ann", "ws") is None
    audit = store.audit(SubjectKind.ACCOUNT, "alice")
    assert [(e.action, e.actor, e.origin) for e in audit] == [("remove", "ann", "ssh 192.0.2.1"), ("add", "svc", "")]
    assert "spam burst" in audit[1].detail and audit[0].detail == "password reset"
    assert len(store.blocks(include_inactive=True)) == 1


def test_expired_block_stops_applying_and_can_be_renewed(incident_store):
    store, clock = incident_store(), incident_store.clock
    store.add_block(
        SubjectKind.ADDRESS,
        "203.0.113.5",
        Origin.AUTH_FAILURES,
        "10 failed logins",
        "MW-1",
        "svc",
        "mx1",
        expires_at=clock.now + 60,
    )
    assert len(store.active_blocks()) == 1
    clock.now += 61
    assert store.active_blocks() == [] and store.blocks() == []
    renewed, created = store.add_block(
        SubjectKind.ADDRESS,
        "203.0.113.5",
        Origin.AUTH_FAILURES,
        "again",
        "MW-2",
        "svc",
        "mx1",
        expires_at=clock.now + 60,
    )
    assert created and renewed.incident_id == "MW-2"
    history = store.blocks(include_inactive=True)
    assert [b.lifted_by for b in history] == ["", "(expired)"]


def test_two_hosts_suspending_at_once_make_one_block(incident_store):
    stores = [incident_store() for _ in range(4)]
    results: list = []
    barrier = threading.Barrier(len(stores))

    def suspend(store, n):
        barrier.wait()
        results.append(
            store.add_block(SubjectKind.ACCOUNT, "bob", Origin.SUSPENSION, "burst", f"MW-{n}", "svc", f"mx{n}")
        )

    threads = [threading.Thread(target=suspend, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({block.id for block, _ in results}) == 1
    assert len(stores[0].audit()) == 1


@pytest.mark.parametrize(
    "kind,raw,canonical",
    [
        (SubjectKind.ADDRESS, "[IPv6:2001:DB8::1]", "2001:db8::1"),
        (SubjectKind.NETWORK, "192.0.2.77/24", "192.0.2.0/24"),
        (SubjectKind.SENDER, "<Bob@Example.ORG>", "bob@example.org"),
        (SubjectKind.DOMAIN, "@Example.ORG.", "example.org"),
        (SubjectKind.ACCOUNT, " alice ", "alice"),
    ],
)
def test_subjects_are_normalised(kind, raw, canonical):
    assert normalise(kind, raw) == canonical


@pytest.mark.parametrize(
    "kind,raw",
    [
        (SubjectKind.ADDRESS, "unknown"),
        (SubjectKind.NETWORK, "10.0.0.0/33"),
        (SubjectKind.SENDER, "nobody"),
        (SubjectKind.DOMAIN, "localhost"),
        (SubjectKind.ACCOUNT, "  "),
    ],
)
def test_bad_subjects_are_refused(kind, raw):
    with pytest.raises(ValueError):
        normalise(kind, raw)


def test_events_before_a_block_never_count_again(incident_store):
    """A suspension that expires (r6) or an auth block: the events that caused it are out of every later
    sum, on every host; events after its start count as usual."""
    store, clock = incident_store(), incident_store.clock
    hour = clock.now - 3600
    for _ in range(3):
        store.record(Counter.ACCOUNT, "alice", Totals(messages=1, spam=1), since=None)
    store.record(Counter.FAILED_LOGINS, "203.0.113.5", Totals(auth_failures=10), since=None)
    clock.now += 1
    for kind, value in ((SubjectKind.ACCOUNT, "alice"), (SubjectKind.ADDRESS, "203.0.113.5")):
        store.add_block(kind, value, Origin.SUSPENSION, "burst", "MW-1", "svc", "mx1", expires_at=clock.now + 600)
    clock.now += 601  # expired, well inside the hour
    other = incident_store()  # another host on the same database
    totals = other.record(Counter.ACCOUNT, "alice", Totals(messages=1), since=hour)
    assert (totals.messages, totals.spam) == (1, 0)
    assert other.record(Counter.FAILED_LOGINS, "203.0.113.5", Totals(auth_failures=1), since=hour).auth_failures == 1
    assert store.record(Counter.ACCOUNT, "bob", Totals(messages=1), since=hour).messages == 1  # others unaffected
    sums = store.add_counts([], {Counter.OUTBOUND_HOST: hour}, read=[(Counter.OUTBOUND_HOST, "alice")])
    assert sums == {(Counter.OUTBOUND_HOST, "alice"): Totals()}  # an account's block is no address's


def test_a_subject_stored_with_a_replacement_character_is_summed_as_passed(incident_store):
    """Text is stored NUL-free (U+FFFD) on both backends; its sums were looked up by the spelling
    passed, not the one stored, and stayed at zero: such a subject could never be suspended."""
    store, clock = incident_store(), incident_store.clock
    for subject in ("bad\x00name", "bad\udcffname"):
        store.record(Counter.ACCOUNT, subject, Totals(messages=1), since=None)
        assert store.record(Counter.ACCOUNT, subject, Totals(messages=1), since=clock.now - 100).messages >= 2


def test_a_sender_block_stored_in_an_older_spelling_still_holds_and_lifts(tmp_path):
    """Blocks stored before addresses had one spelling ("ceo"@example.org.) matched no sender any
    more, not even as written, and `block remove` could not name them: the upgrade rewrites them."""
    import sqlite3

    settings = load_settings(None, {"state_dir": str(tmp_path / "state")})
    incidents = open_incidents(settings)
    for stored in ('"ceo"@example.org.', "boss@example.org.", '"boss"@example.org'):
        incidents.store.add_block(SubjectKind.SENDER, stored, Origin.ANALYST, "r", "MW-1", "a", "h", "cli", None)
    incidents.store.add_block(SubjectKind.DOMAIN, "Evil.Example.", Origin.ANALYST, "r", "MW-2", "a", "h", "cli", None)
    incidents.close()
    with sqlite3.connect(tmp_path / "state" / "incidents.sqlite3") as db:  # as schema step 2 left it
        db.execute("DROP INDEX incident_blocks_subject")
        db.execute("UPDATE schema_versions SET version = 2 WHERE store = 'incidents'")
    incidents = open_incidents(settings)
    active = sorted(b.value for b in incidents.store.active_blocks())
    assert active == ["boss@example.org", "ceo@example.org", "evil.example"]  # one "boss" block stays active
    for sender in ('"ceo"@example.org.', "ceo@example.org", "boss@example.org", "x@mail.evil.example"):
        assert incidents.sender_block("", sender) is not None, sender
    assert incidents.lift(SubjectKind.SENDER, "boss@example.org", Actor("analyst", "mx1")) is not None
    assert incidents.sender_block("", "boss@example.org") is None
    incidents.close()
