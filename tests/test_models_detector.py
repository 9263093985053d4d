"""The spam detector with the shipped model: score and clues in the evidence, thresholds in the policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mailward.config import DirectionPolicy, LimitSettings, Settings
from mailward.envelope import Envelope
from mailward.evidence import Category
from mailward.message import parse_message
from mailward.models import detectors
from mailward.models.gtube import GtubeDetector
from mailward.models.spam import SpamDetector
from mailward.policy import decide
from mailward.verdict import Action

MAIL = Path(__file__).parent / "fixtures" / "mail"


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> SpamDetector:
    settings = Settings(state_dir=str(tmp_path_factory.mktemp("state")))
    found = detectors(settings)
    assert [type(d) for d in found] == [GtubeDetector, SpamDetector]
    return found[1]


def evidence_for(detector: SpamDetector, name: str):
    return detector.inspect(parse_message((MAIL / name).read_bytes(), LimitSettings()), Envelope())


def test_spammy_message_scores_high_with_its_own_tokens_as_clues(detector):
    spam = evidence_for(detector, "spammy.eml").spam
    assert spam.score > 0.9
    assert spam.model_version.startswith("nb-")
    tokens = {c.token for c in spam.clues}
    assert {"cialis", "pharmacy"} <= tokens
    assert all(c.weight > 0 for c in spam.clues[:3])
    assert [abs(c.weight) for c in spam.clues] == sorted((abs(c.weight) for c in spam.clues), reverse=True)


def test_normal_message_scores_low(detector):
    for name in ("ham.eml", "preprocessed.txt"):
        spam = evidence_for(detector, name).spam
        assert spam.score < 0.5, name
        assert spam.clues[0].weight < 0


def test_policy_thresholds_act_on_the_score(detector):
    spam_evidence = evidence_for(detector, "spammy.eml")
    ham_evidence = evidence_for(detector, "ham.eml")
    policy = DirectionPolicy()  # tag 0.5, quarantine at 0.9
    assert decide(spam_evidence, policy, "MW-1").action is Action.QUARANTINE
    assert decide(ham_evidence, policy, "MW-2").action is Action.ACCEPT
    score = spam_evidence.spam.score
    only_tag = dataclasses.replace(policy, tag_threshold=min(score, 0.5), spam_threshold=1.0)
    assert score < 1.0 and decide(spam_evidence, only_tag, "MW-3").action is Action.TAG
    rejecting = policy.with_actions({Category.SPAM: Action.REJECT})
    assert decide(spam_evidence, rejecting, "MW-4").action is Action.REJECT


def test_scores_are_probabilities_not_a_saturated_posterior(detector):
    raw = (MAIL / "ham.eml").read_bytes()
    head, body = raw.split(b"\n\n", 1)
    mixed = head + b"\n\n" + body + b"\nP.S. buy cheap viagra and cialis online, no prescription needed!\n"
    scores = [evidence_for_raw(detector, r).spam.score for r in (raw, mixed)]
    assert 0.0 < scores[0] < scores[1] < 1.0


def evidence_for_raw(detector: SpamDetector, raw: bytes):
    return detector.inspect(parse_message(raw, LimitSettings()), Envelope())


def test_inspector_puts_the_spam_score_in_the_evidence(tmp_path):
    from mailward.runtime import build_inspector

    inspector = build_inspector(Settings(state_dir=str(tmp_path)))
    evidence = inspector.inspect((MAIL / "spammy.eml").read_bytes(), Envelope())
    assert evidence.spam_score is not None and evidence.spam_score > 0.9
    assert "spam-model" in dict(evidence.timings)
