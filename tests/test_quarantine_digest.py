"""`mailward quarantine digest` out of the box: every recipient, HTML and text, signed links, once per message."""

from __future__ import annotations

import email
import email.policy
import re
import time

import pytest

from mailward.config import load_settings
from mailward.marks import load_release_key
from mailward.quarantine import open_store
from mailward.quarantine.links import RecipientLink, link_key_path, sign_link, verify_link
from mailward.source import MessageSource
from quarantine_support import envelope, malware_case, message, quarantine_cli, spam_case


def _settings(tmp_path, sink, web: dict | None = None):
    return load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "web": web or {},
            "quarantine": {"relay_port": sink.port, "relay_timeout": 10.0},
        }
    )


def _put(settings, raw: bytes, recipients=("bob@example.net",), case=spam_case) -> str:
    v, e = case()
    with open_store(settings) as store:
        return store.put(MessageSource.of(raw), envelope(recipients=recipients), v, e)


def _received(sink) -> dict[str, email.message.EmailMessage]:
    return {rcpts[0]: email.message_from_bytes(data, policy=email.policy.default) for _, rcpts, data in sink.received}


def test_digest_reaches_every_recipient_once_and_explains_without_a_web_page(tmp_path, smtp_sink, capsys):
    settings = _settings(tmp_path, smtp_sink)
    cli = quarantine_cli(settings, capsys)
    spam = _put(settings, message("Cheap <b>pills</b>"))
    _put(settings, message("Team lunch"), recipients=("carol@example.net", "bob@example.net"))
    code, out, _ = cli("digest")  # no flags: every recipient with held mail
    assert code == 0 and "sent 2 digest(s) covering 2 message(s)" in out
    got = _received(smtp_sink)
    assert set(got) == {"bob@example.net", "carol@example.net"}
    bob = got["bob@example.net"]
    text = bob.get_body(("plain",)).get_content()
    page = bob.get_body(("html",)).get_content()
    assert spam in text and "ask your mail administrator" in text and "/r/" not in text
    assert "Cheap &lt;b&gt;pills&lt;/b&gt;" in page and "<b>pills" not in page  # escaped, not markup
    assert bob["Auto-Submitted"] == "auto-generated"

    smtp_sink.received.clear()
    assert "sent 0 digest(s)" in cli("digest")[1]  # the same period again: nothing new, nothing sent
    assert smtp_sink.received == []
    _put(settings, message("Later"), recipients=("bob@example.net",))
    cli("digest")
    assert list(_received(smtp_sink)) == ["bob@example.net"]
    assert "Later" in _received(smtp_sink)["bob@example.net"].get_body(("plain",)).get_content()
    assert "Cheap" not in _received(smtp_sink)["bob@example.net"].get_body(("plain",)).get_content()


def test_digest_links_to_the_web_page_only_for_spam_a_recipient_may_release(tmp_path, smtp_sink, capsys):
    settings = _settings(tmp_path, smtp_sink, {"base_url": "https://quarantine.example.net"})
    cli = quarantine_cli(settings, capsys)
    spam = _put(settings, message("Offer"))
    virus = _put(settings, message("Invoice"), case=malware_case)
    assert cli("digest")[0] == 0
    bob = _received(smtp_sink)["bob@example.net"]
    text = bob.get_body(("plain",)).get_content()
    links = re.findall(r"https://quarantine\.example\.net/r/(\S+)", text)
    assert len(links) == 2  # the spam message, and the whole digest
    key = load_release_key(link_key_path(settings))
    scopes = {verify_link(key, token, time.time()).quarantine_id for token in links}
    assert scopes == {spam, ""}  # never a link for the malware
    assert virus in text  # but it is listed, so a missing invoice is noticed
    assert 'href="https://quarantine.example.net/r/' in bob.get_body(("html",)).get_content()


def test_links_are_bound_to_recipient_scope_and_time():
    key = b"k" * 32
    link = RecipientLink("bob@example.net", "MW-1", 1_000_000, 1_000_000 + 86400)
    token = sign_link(key, link)
    assert verify_link(key, token, 1_000_100) == link
    assert verify_link(key, token, 1_000_000 + 86400) is None  # expired
    assert verify_link(b"x" * 32, token, 1_000_100) is None  # another key
    body, _, mac = token.partition(".")
    other = sign_link(key, RecipientLink("eve@example.net", "MW-1", 1_000_000, 1_000_000 + 86400))
    assert verify_link(key, other.partition(".")[0] + "." + mac, 1_000_100) is None  # moved to another recipient
    assert verify_link(key, "garbage", 1_000_100) is None
    assert verify_link(key, "a.b", 1_000_100) is None


@pytest.mark.parametrize("days", [0, 91])
def test_link_lifetime_is_validated_where_the_config_is_loaded(days):
    from mailward.errors import ConfigError

    with pytest.raises(ConfigError, match="web.link_days"):
        load_settings(overrides={"web": {"link_days": days}})
