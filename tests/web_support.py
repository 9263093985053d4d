"""The quarantine web page's shared set-up: settings, a store with messages, accounts, hostile mail."""

from __future__ import annotations

from pathlib import Path

from argon2 import PasswordHasher

from mailward.config import Settings, load_settings
from mailward.marks import load_release_key
from mailward.quarantine import open_store
from mailward.quarantine.links import link_key_path
from mailward.review.service import QuarantineService
from mailward.source import MessageSource
from mailward.web.accounts import DB_NAME, AccountStore
from mailward.web.app import Parts
from quarantine_support import envelope, spam_case

PASSWORD = "correct horse battery"
# Still argon2id, at a cost that keeps the tests fast (the product uses argon2-cffi's defaults).
CHEAP_ARGON2 = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


# A message built to attack its reviewer: script, event handlers, a remote beacon, a meta refresh.
# ``beacon`` is a loopback URL that must never be fetched.
def hostile_message(beacon: str) -> bytes:
    html = (
        f'<html><head><meta http-equiv="refresh" content="0;url={beacon}/refresh">'
        f"<script>document.title='pwned';window.pwned=1;fetch('{beacon}/script')</script></head>"
        f'<body onload="window.pwned=2"><img src="{beacon}/img" onerror="window.pwned=3">'
        f'<iframe src="{beacon}/frame"></iframe><p>Pay the invoice</p></body></html>'
    )
    return (
        "From: =?utf-8?q?Billing_=E2=80=AEexe.fdp?= <billing@bad.test>\r\nTo: bob@example.net\r\n"
        "Subject: <script>alert(1)</script> Invoice\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPay the invoice\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--b1--\r\n"
    ).encode("utf-8")


def web_settings(state: Path, relay_port: int, **web: object) -> Settings:
    return load_settings(
        overrides={"state_dir": str(state), "web": web, "quarantine": {"relay_port": relay_port, "relay_timeout": 10.0}}
    )


def put(
    settings: Settings, raw: bytes, recipients=("bob@example.net",), case=spam_case, sender: str = "alice@example.org"
) -> str:
    v, e = case()
    with open_store(settings) as store:
        return store.put(MessageSource.of(raw), envelope(sender=sender, recipients=recipients), v, e)


def make_parts(settings: Settings, clock=None) -> Parts:
    """Parts over the real store and account database of ``settings`` (the caller closes them)."""
    import time

    clock = clock or time.time
    store = open_store(settings)
    accounts = AccountStore(
        Path(settings.state_dir) / DB_NAME, settings.web.lockout_after, settings.web.session_idle, clock, CHEAP_ARGON2
    )
    return Parts(
        settings, QuarantineService(settings, store), accounts, load_release_key(link_key_path(settings)), clock
    )


def close_parts(parts: Parts) -> None:
    parts.accounts.close()
    parts.service.store.close()
