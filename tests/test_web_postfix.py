"""End to end through a real Postfix and mailward-milter: spam is held, the recipient's digest arrives in
their mailbox with a signed link, and the recipient releases the message from the web page."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import default

import pytest
from starlette.testclient import TestClient

from harness.postfix import wait_for
from mailward.cli.main import main as cli
from mailward.config import load_settings
from mailward.web.app import create_app
from support.mail import gtube_message
from support.web import close_parts, make_parts

pytestmark = pytest.mark.postfix


def mailbox(postfix, needle: bytes) -> list[bytes]:
    new = postfix.maildir / "new"
    return [p.read_bytes() for p in new.glob("*") if needle in p.read_bytes()] if new.exists() else []


def test_digest_through_postfix_and_a_recipient_release_from_its_link(postfix, milter, tmp_path):
    config = str(tmp_path / "mailward.toml")
    m = milter(
        f'[policy.inbound]\nspam_action = "quarantine"\n'
        f'[quarantine]\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\n'
        f'digest_sender = "postmaster@example.test"\n'
        f'[web]\nbase_url = "https://quarantine.example.test"\n'
    )
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 250
    qid = m.event_where(lambda e: e["mailward"]["verdict"] == "quarantine")["mailward"]["quarantine_id"]

    assert cli(["--config", config, "quarantine", "digest"]) == 0
    found = wait_for(lambda: mailbox(postfix, b"Quarantine digest"))
    assert found, (m.log_path.read_text()[-3000:], postfix.log()[-2000:])
    [digest] = found
    text = message_from_bytes(digest, policy=default).get_body(("plain",)).get_content()
    assert qid in text and "Special offer" in text
    token = re.search(r"https://quarantine\.example\.test/r/(\S+)", text)[1]
    assert cli(["--config", config, "quarantine", "digest"]) == 0  # again: nothing new, nothing sent
    assert len(mailbox(postfix, b"Quarantine digest")) == 1

    parts = make_parts(load_settings(config))
    try:
        with TestClient(create_app(parts), follow_redirects=False) as client:
            page = client.get(f"/r/{token}")
            assert "Special offer" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
            done = client.post(f"/r/{token}/release", data={"id": qid, "csrf": csrf})
            assert done.headers["location"].endswith("done=released"), done.headers
    finally:
        close_parts(parts)
    [delivered] = wait_for(lambda: mailbox(postfix, mid.encode()))
    assert "released" in message_from_bytes(delivered)["X-Mailward-Reasons"]
