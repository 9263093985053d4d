"""Autolearn takes only confident verdicts, never overrides an analyst, and keeps its guards."""

from __future__ import annotations

import dataclasses

import pytest

from mailward.config import LearningSettings
from mailward.training.autolearn import autolearn, sender_domain
from mailward.training.learning import rebuild, record
from mailward.training.ledger import Ledger, digest_of
from mailward.training.registry import Registry
from mailward.training.sources import read_sets
from support.training import FIXTURES, config, run, run_json

# With a model trained on the fixtures themselves, every fixture is on the right side of 0.5.
DECISIVE = LearningSettings(
    autolearn_ham_below=0.5, autolearn_spam_above=0.5, autolearn_per_sender=100, autolearn_max_ratio=100.0
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    base = tmp_path_factory.mktemp("autolearn-model")
    with Ledger(base / "ledger.sqlite") as ledger:
        record(ledger, read_sets([str(FIXTURES / "layout")]), "ann")
        return rebuild(ledger, Registry(base / "models", shipped_dir=None)).scorer()


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def unlabelled():
    """The 11 fixture messages (5 ham, 5 spam, 1 phish), without their labels."""
    return read_sets([str(FIXTURES / "layout" / name) for name in ("ham", "spam", "group/phish")], labelled=False)


def test_confident_verdicts_are_recorded_and_analysts_labels_win(ledger, model):
    overridden = (FIXTURES / "layout/ham/00.eml").read_bytes()
    ledger.record(overridden, "spam", "report", "ann")
    outcomes = autolearn(ledger, unlabelled(), model, DECISIVE)
    assert outcomes == {"already-labelled": 1, "learned-ham": 4, "learned-spam": 6}
    assert ledger.current_label(digest_of(overridden)) == "spam"
    taken = [e for e in ledger.entries() if e.analyst == "autolearn"]
    assert len(taken) == 10 and all(e.source.startswith("autolearn:") for e in taken)


def test_nothing_is_taken_below_the_confidence_thresholds(ledger, model):
    unsure = dataclasses.replace(DECISIVE, autolearn_ham_below=0.0, autolearn_spam_above=1.01)
    assert autolearn(ledger, unlabelled(), model, unsure) == {"not-confident": 11}
    assert ledger.last_seq() == 0


def test_per_sender_cap(ledger, model):
    capped = dataclasses.replace(DECISIVE, autolearn_per_sender=1)
    outcomes = autolearn(ledger, unlabelled(), model, capped)
    # ham senders: alice and dave @example.org, bob and erin @example.net, carol @example.com
    # and the phish comes from the same domain as one of the spam messages.
    assert outcomes["learned-ham"] == 3 and outcomes["sender-cap"] == 3
    assert sender_domain((FIXTURES / "layout/ham/03.eml").read_bytes()) == "example.org"
    for varied in (b"From: x@d17.example.org\n\n", b"From: X <x@D2.Mail.Example.ORG.>\n\n"):
        assert sender_domain(varied) == "example.org"  # one allowance, however the sender varies subdomains


def test_class_balance_guard(ledger, model):
    balanced = dataclasses.replace(DECISIVE, autolearn_max_ratio=1.0)
    outcomes = autolearn(ledger, unlabelled(), model, balanced)
    assert outcomes == {"learned-spam": 1, "learned-ham": 1, "class-balance": 9}
    counts = ledger.counts()
    assert counts["ham"] == counts["spam"] == 1


def test_train_autolearn_command(tmp_path):
    state = tmp_path / "state"
    config(state, "[learning]\nautolearn_ham_below = 0.5\nautolearn_spam_above = 0.5\n")
    first = run_json(state, "train", str(FIXTURES / "layout"))["candidate"]
    assert run(state, "model", "promote", first, "--force")[0] == 0
    report = run_json(state, "train", "--autolearn", str(FIXTURES / "maildir/ham"), str(FIXTURES / "layout"))
    assert report["recorded"]["already-labelled"] == 11
    assert report["recorded"].get("learned-ham", 0) + report["recorded"].get("learned-spam", 0) == report["learned"]
    assert report["learned"] >= 1 and report["candidate"] != first
