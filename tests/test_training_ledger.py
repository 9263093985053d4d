"""The label ledger and learning from it: append-only, repeats ignored, relabels exact, quarantine imported."""

from __future__ import annotations

import numpy as np
import pytest

from mailward.actor import Actor
from mailward.evidence import Label
from mailward.quarantine.sqlite import SqliteStore
from mailward.source import MessageSource
from mailward.training.estimator import feature_count
from mailward.training.learning import Lineage, import_quarantine, rebuild, record, update
from mailward.training.ledger import LabelOutcome, Ledger, LedgerError, digest_of
from mailward.training.registry import Registry
from mailward.training.sources import read_sets
from support.quarantine import FakeClock, envelope, spam_case
from support.training import FIXTURES


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite", clock=FakeClock()) as led:
        yield led


def test_repeat_is_ignored_and_change_supersedes(ledger):
    data = (FIXTURES / "layout/ham/00.eml").read_bytes()
    assert ledger.record(data, "ham", "set", "ann")[1] is LabelOutcome.NEW
    assert ledger.record(data, "ham", "other-set", "bob")[1] is LabelOutcome.REPEATED
    assert ledger.last_seq() == 1
    assert ledger.record(data, "spam", "report", "bob")[1] is LabelOutcome.CHANGED
    assert ledger.current_label(digest_of(data)) == "spam"
    assert ledger.current_label(digest_of(data), upto=1) == "ham"
    [first, second] = ledger.entries()
    assert (first.label, first.analyst, second.label, second.source) == ("ham", "ann", "spam", "report")
    assert ledger.message(digest_of(data)) == data


def test_entries_cannot_be_rewritten(ledger):
    ledger.record(b"Subject: x\n\nx\n", "ham", "set", "ann")
    for statement in ("UPDATE labels SET label = 'spam'", "DELETE FROM labels", "DELETE FROM messages"):
        with pytest.raises(LedgerError, match="append-only|kept"), ledger.database.transaction(write=True) as tx:
            tx.execute(statement)


def test_changes_against_a_model_seq(ledger):
    a, b, c = b"Subject: a\n\na\n", b"Subject: b\n\nb\n", b"Subject: c\n\nc\n"
    ledger.record(a, "ham", "s", "x")
    ledger.record(b, "spam", "s", "x")
    seq = ledger.last_seq()
    ledger.record(a, "spam", "s", "x")  # changed
    ledger.record(b, "ham", "s", "x")  # flipped...
    ledger.record(b, "spam", "s", "x")  # ...and back: nothing for the model
    ledger.record(c, "ham", "s", "x")  # new
    changes = {ch.digest: (ch.before, ch.after) for ch in ledger.changes(seq, ledger.last_seq())}
    assert changes == {digest_of(a): ("ham", "spam"), digest_of(c): (None, "ham")}
    assert dict(ledger.current_labels()) == {digest_of(a): "spam", digest_of(b): "spam", digest_of(c): "ham"}


def test_relabelling_by_exact_subtraction_equals_a_rebuild(ledger, tmp_path):
    registry = Registry(tmp_path / "models")
    record(ledger, read_sets([str(FIXTURES / "layout")]), "ann")
    first = registry.add(rebuild(ledger, registry))
    assert Lineage.of(first) == Lineage("", ledger.last_seq())
    flipped = (FIXTURES / "layout/ham/03.eml").read_bytes()
    added = (FIXTURES / "maildir/ham/new/1700000002.M2P2.host").read_bytes()
    ledger.record(flipped, "spam", "report", "bob")
    ledger.record(added, "ham", "report", "bob")
    result = update(ledger, registry.load(first.version))
    assert (result.learned, result.relabelled) == (1, 1)
    rebuilt = rebuild(ledger, registry)
    assert np.array_equal(result.model.counts.class_count, rebuilt.counts.class_count)
    assert np.array_equal(result.model.counts.columns, rebuilt.counts.columns)
    assert np.array_equal(result.model.counts.counts, rebuilt.counts.counts)
    assert result.model.class_counts == {"ham": 5, "spam": 7}  # ham 5-1+1, spam 5+phish+flipped
    assert update(ledger, registry.add(result.model)).model is None  # nothing after its seq


def test_a_model_without_lineage_is_its_own_base(ledger, tmp_path):
    registry = Registry(tmp_path / "models")
    record(ledger, read_sets([str(FIXTURES / "layout")]), "ann")
    base = registry.add(rebuild(ledger, registry))
    base_counts = feature_count(base.counts).toarray()
    foreign = registry.load(base.version)
    foreign = type(foreign)(foreign.counts, foreign.features, foreign.combiner, {}, foreign.version)
    assert Lineage.of(foreign) == Lineage(base.version, 0)
    record(ledger, read_sets([str(FIXTURES / "reports-spam.mbox")]), "ann")
    result = update(ledger, foreign)
    assert result.learned == 11 + 3  # every ledger entry, on top of the base counts
    assert result.model.training_data["lineage"] == {"base": base.version, "seq": ledger.last_seq()}
    again = rebuild(ledger, registry, base.version)
    assert np.array_equal(feature_count(again.counts).toarray(), feature_count(result.model.counts).toarray())
    assert not np.array_equal(feature_count(again.counts).toarray(), base_counts)


def test_quarantine_labels_are_imported_once_with_their_bytes(ledger, tmp_path):
    clock = FakeClock()
    store = SqliteStore(tmp_path / "quarantine", clock=clock)
    analyst = Actor("ann", "host")
    raw = [(FIXTURES / f"layout/spam/0{i}.eml").read_bytes() for i in range(3)]
    ids = [store.put(MessageSource.of(r), envelope(), *spam_case()) for r in raw]
    assert store.record_label(ids[0], Label.SPAM, analyst)
    assert store.record_label(ids[1], Label.HAM, analyst)  # released as ham
    assert store.record_label(ids[2], Label.SPAM, analyst)
    store.delete(ids[2], analyst, "purge")  # bytes gone before the import
    outcomes = import_quarantine(ledger, store)
    assert outcomes == {LabelOutcome.NEW: 2, "missing": 1}
    assert ledger.current_label(digest_of(raw[1])) == "ham"
    assert ledger.message(digest_of(raw[0])) == raw[0]
    [entry] = [e for e in ledger.entries() if e.digest == digest_of(raw[0])]
    assert (entry.source, entry.analyst) == (f"quarantine:{ids[0]}", "ann")
    assert import_quarantine(ledger, store) == {}  # high-water mark kept
    store.record_label(ids[1], Label.SPAM, analyst)
    assert import_quarantine(ledger, store) == {LabelOutcome.CHANGED: 1}
    phish_raw = (FIXTURES / "layout/spam/03.eml").read_bytes() + b"\n"
    phish = store.put(MessageSource.of(phish_raw), envelope(), *spam_case())
    store.record_label(phish, Label.PHISH, analyst)
    assert store.get(phish).label is Label.PHISH  # its own label in the quarantine
    assert import_quarantine(ledger, store) == {LabelOutcome.NEW: 1}
    assert ledger.current_label(digest_of(store.read(phish))) == "spam"  # the model's class
    store.close()
