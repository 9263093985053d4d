from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailward.addresses import canonical_address, policy_keys, policy_subject
from mailward.config import DirectionPolicy, PolicySettings, PolicyTable
from mailward.envelope import Direction, DirectionRules, Envelope
from mailward.evidence import Category, Evidence, Finding, Severity, SpamAssessment
from mailward.policy import Inputs, Listed, Mark, Share, decide, decide_failure, split
from mailward.verdict import Action, Verdict, new_incident_id

POLICY = DirectionPolicy()


def finding(category: Category, severity: Severity = Severity.CRITICAL, detector: str = "test") -> Finding:
    return Finding(category, "rule-name-internal", severity, detector, "a.zip > b.exe")


def test_clean_message_is_accepted():
    v = decide(Evidence(), POLICY, "MW-1")
    assert v.action is Action.ACCEPT and v.reasons == () and v.reply is None


def test_strongest_action_wins_and_leads_the_reasons():
    ev = Evidence(findings=(finding(Category.UNCHECKED), finding(Category.MALWARE)), spam=SpamAssessment(0.95))
    v = decide(ev, POLICY, "MW-1")
    assert v.action is Action.REJECT
    assert v.reasons[0] == "malware"
    assert set(v.reasons) == {"malware", "unchecked", "spam"}


def test_reply_is_generic_with_incident_id():
    v = decide(Evidence(findings=(finding(Category.MALWARE),)), POLICY, "MW-0000-ABCD")
    text = str(v.reply)
    assert text.startswith("550 5.7.1 ") and "MW-0000-ABCD" in text
    assert "rule-name-internal" not in text and "b.exe" not in text


def test_spam_thresholds():
    assert decide(Evidence(spam=SpamAssessment(0.2)), POLICY, "i").action is Action.ACCEPT
    assert decide(Evidence(spam=SpamAssessment(0.6)), POLICY, "i").action is Action.TAG
    assert decide(Evidence(spam=SpamAssessment(0.95)), POLICY, "i").action is Action.QUARANTINE
    strict = replace(POLICY, spam_threshold=0.5).with_actions({Category.SPAM: Action.REJECT})
    assert decide(Evidence(spam=SpamAssessment(0.6)), strict, "i").action is Action.REJECT


def test_weak_findings_only_tag_and_info_is_ignored():
    assert decide(Evidence(findings=(finding(Category.MACRO, Severity.LOW),)), POLICY, "i").action is Action.TAG
    assert decide(Evidence(findings=(finding(Category.MACRO, Severity.INFO),)), POLICY, "i").action is Action.ACCEPT


def test_detector_errors_follow_on_error_per_check():
    ev = Evidence(findings=(finding(Category.ERROR, detector="dns"),))
    assert decide(ev, POLICY, "i").action is Action.TEMPFAIL
    assert decide(ev, replace(POLICY, accept_errors_from=("dns",)), "i").action is Action.ACCEPT
    v = decide_failure(replace(POLICY, on_error=Action.ACCEPT), "i")
    assert v.action is Action.ACCEPT


def test_tempfail_reply_is_4xx():
    v = decide(Evidence(findings=(finding(Category.ERROR),)), POLICY, "MW-9")
    assert v.reply.code == "451" and v.reply.xcode.startswith("4.") and "MW-9" in v.reply.text


def test_refusal_reply_exists_only_for_refusals():
    reject = decide(Evidence(findings=(finding(Category.MALWARE),)), POLICY, "MW-2")
    assert reject.refusal_reply() == reject.reply
    accept = decide(Evidence(), POLICY, "MW-3")
    with pytest.raises(ValueError, match="accept"):
        accept.refusal_reply()


def test_outbound_and_inbound_policies_differ():
    p = PolicySettings()
    assert p.for_direction(Direction.OUTBOUND) is p.outbound
    assert p.for_direction(Direction.INBOUND) is p.inbound


def test_direction_from_auth_daemon_and_networks():
    rules = DirectionRules.build(["192.0.2.0/24", "2001:db8::/32"], ["ORIGINATING"])
    assert rules.classify(Envelope(auth_user="alice")) is Direction.OUTBOUND
    assert rules.classify(Envelope(daemon="ORIGINATING")) is Direction.OUTBOUND
    assert rules.classify(Envelope(client_address="192.0.2.7")) is Direction.OUTBOUND
    assert rules.classify(Envelope(client_address="2001:db8::1")) is Direction.OUTBOUND
    assert rules.classify(Envelope(client_address="198.51.100.1", daemon="mx")) is Direction.INBOUND
    assert rules.classify(Envelope(client_address="garbage")) is Direction.INBOUND


def test_header_block_for_lf_and_crlf():
    from mailward.message import header_block

    assert header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore") == b"A: 1\r\nB: 2"
    assert header_block(b"A: 1\nB: 2\n\nbody") == b"A: 1\nB: 2"
    assert header_block(b"A: 1\nno body") == b"A: 1\nno body"


def test_a_cold_start_model_tags_but_acts_only_above_its_floor():
    cold = SpamAssessment(0.95, regime="cold-start", spam_floor=0.999)
    assert decide(Evidence(spam=cold), POLICY, "i").action is Action.TAG
    sure = SpamAssessment(0.9995, regime="cold-start", spam_floor=0.999)
    assert decide(Evidence(spam=sure), POLICY, "i").action is POLICY.actions[Category.SPAM]
    strict = replace(POLICY, spam_threshold=0.9999)  # a stricter policy threshold still wins
    assert decide(Evidence(spam=sure), strict, "i").action is Action.TAG


def test_an_allowed_sender_skips_spam_and_reputation_but_never_malware_or_banned_files():
    spammy = Evidence(findings=(finding(Category.REPUTATION), finding(Category.SPAM)), spam=SpamAssessment(0.99))
    allowed = decide(spammy, POLICY, "i", Inputs(listed=Listed.ALLOW))
    assert allowed.action is Action.ACCEPT and allowed.reasons == ("allowed",) and allowed.acted_on == ()
    for category in (Category.MALWARE, Category.FILETYPE, Category.MACRO, Category.BLOCKED):
        bad = Evidence(findings=(finding(category),), spam=SpamAssessment(0.99))
        assert decide(bad, POLICY, "i", Inputs(listed=Listed.ALLOW)).action is POLICY.actions[category]


def test_a_blocked_sender_counts_as_certain_spam_for_the_recipient():
    v = decide(Evidence(spam=SpamAssessment(0.01)), POLICY, "i", Inputs(listed=Listed.BLOCK))
    assert v.action is POLICY.actions[Category.SPAM] and v.reasons == ("blocked",)
    assert "Sender not accepted" in v.public_reason


def test_a_mark_and_hold_are_decided_here():
    spam = Evidence(spam=SpamAssessment(0.99))
    assert decide(spam, POLICY, "i", Inputs(hold=True)).hold is True
    assert decide(Evidence(), POLICY, "i", Inputs(hold=True)).hold is False  # hold is for quarantined mail
    released = decide(spam, POLICY, "i", Inputs(mark=Mark.RELEASE, hold=True))
    assert (released.action, released.reasons, released.hold) == (Action.TAG, ("spam", "released"), False)
    assert decide(spam, POLICY, "i").acted_on == (Category.SPAM,)


def test_split_quarantines_some_recipients_and_delivers_to_the_others():
    def share(action: Action, *who: str) -> Share:
        return Share(
            who,
            decide(Evidence(), POLICY, "i")
            if action is Action.ACCEPT
            else replace(decide(Evidence(), POLICY, "i"), action=action),
        )

    mixed = split([share(Action.QUARANTINE, "a@x"), share(Action.ACCEPT, "b@x"), share(Action.TAG, "c@x")])
    assert mixed.delivered.recipients == ("b@x", "c@x") and mixed.delivered.verdict.action is Action.TAG
    assert mixed.held is not None and mixed.held.recipients == ("a@x",)
    refused = split([share(Action.QUARANTINE, "a@x"), share(Action.REJECT, "b@x")])  # SMTP: all or nothing
    assert refused.held is None and refused.delivered.verdict.action is Action.REJECT
    assert refused.delivered.recipients == ("a@x", "b@x")
    one = split([share(Action.QUARANTINE, "a@x"), share(Action.QUARANTINE, "b@x")])
    assert one.held is None and one.delivered.recipients == ("a@x", "b@x")


def test_every_category_has_an_action_in_the_one_table():
    from mailward.config import ACTION_KEYS, DEFAULT_ACTIONS

    assert set(DEFAULT_ACTIONS) == set(Category) - {Category.ERROR}  # ERROR applies on_error instead
    assert ACTION_KEYS["spam_action"] is Category.SPAM and len(ACTION_KEYS) == len(DEFAULT_ACTIONS)


@given(st.text(max_size=80), st.text(max_size=80))
def test_any_recipient_or_sender_text_finds_a_policy(sender, recipient):
    """Envelope addresses come from the wire: malformed ones fall back to the direction's policy, never raise."""
    strict = replace(DirectionPolicy(), spam_threshold=0.5)
    tables = PolicySettings(recipient=(PolicyTable(("example.org",), strict),))
    for direction in (Direction.INBOUND, Direction.OUTBOUND):
        assert isinstance(tables.for_recipient(direction, sender, recipient), DirectionPolicy)
    keys = policy_keys(recipient)
    assert all(isinstance(k, str) and k for k in keys)
    if recipient.lower().endswith("@example.org"):
        assert tables.for_recipient(Direction.INBOUND, sender, recipient) is strict


def test_incident_ids_made_in_one_second_do_not_collide():
    """The ID is the quarantine record's key on every host sharing a store: with 4 random bytes,
    200,000 IDs in one second held about 5 duplicates (each then tempfailed its message)."""
    ids = [new_incident_id(now=1_800_000_000) for _ in range(200_000)]
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith("MW-6B49D200-") and len(ids[0]) == len("MW-6B49D200-") + 12


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("<CEO@Example.ORG>", "ceo@example.org"),
        ("ceo@example.org.", "ceo@example.org"),
        ('"ceo"@example.org', "ceo@example.org"),
        ('"c\\eo.x"@example.org', "ceo.x@example.org"),  # a quoted pair that needs no quoting
        ('"ceo x"@example.org', '"ceo x"@example.org'),  # another mailbox: the quotes stay
        ('"a@b"@example.org', '"a@b"@example.org'),
        ('".ceo"@example.org', '".ceo"@example.org'),
        ("<@relay.example,@b.example:ceo@example.org>", "ceo@example.org"),
        ("ceo@[example.org.]", "ceo@example.org"),
        ("ceo@[192.0.2.1]", "ceo@[192.0.2.1]"),  # an address literal is no domain name
        ("ceo@[IPv6:2001:db8::1]", "ceo@[ipv6:2001:db8::1]"),
        ("Example.ORG.", "example.org"),
        ("", ""),
    ],
)
def test_one_address_has_one_canonical_spelling(written, canonical):
    assert canonical_address(written) == canonical


def test_policy_keys_and_subjects_read_addresses_canonically():
    assert policy_keys('<@relay.example:"ceo"@Mail.Example.ORG.>') == (
        "ceo@mail.example.org",
        "mail.example.org",
        "example.org",
        "org",
    )
    assert policy_subject('"ceo"@example.org.') == "ceo@example.org" and policy_subject("@example.org") == "example.org"


def test_a_recipient_read_with_replacement_characters_is_never_split_off():
    """It came in bytes that are not UTF-8: no delrcpt could name it, so nobody's copy is split."""
    tag = Verdict(Action.TAG, ("spam",), "MW-1")
    hold = Verdict(Action.QUARANTINE, ("spam",), "MW-1")
    assert split([Share(("a@example.test",), tag), Share(("b@remote.test",), hold)]).held is not None
    whole = split([Share(("a@example.test",), tag), Share(("c\ufffd@remote.test",), hold)])
    assert whole.held is None and whole.delivered.verdict.action is Action.QUARANTINE
    assert whole.delivered.recipients == ("a@example.test", "c\ufffd@remote.test")
