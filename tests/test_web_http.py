"""The quarantine web page over HTTP (Starlette's TestClient on the real app, store, accounts and relay)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from mailward.evidence import Label
from mailward.incidents import SubjectKind
from mailward.incidents import open_store as open_incidents_store
from mailward.quarantine.links import new_link, sign_link
from mailward.quarantine.records import Status
from mailward.web.accounts import AccountError, AccountStore, Login
from mailward.web.app import create_app
from support.mail import plain_mail as message
from support.quarantine import FakeClock, malware_case
from support.web import PASSWORD, close_parts, hostile_message, make_parts, put, web_settings

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def site(tmp_path, smtp_sink, clock):
    settings = web_settings(tmp_path / "state", smtp_sink.port)
    parts = make_parts(settings, clock)
    parts.accounts.add("alice", PASSWORD, "test")
    client = TestClient(create_app(parts), follow_redirects=False)
    client.parts = parts
    client.settings = settings
    yield client
    client.close()
    close_parts(parts)


def login(client: TestClient, name: str = "alice", password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"name": name, "password": password, "csrf": CSRF.search(page.text)[1]})


def csrf_of(client: TestClient, path: str) -> str:
    return CSRF.search(client.get(path).text)[1]


def test_pages_need_a_login_and_carry_the_security_headers(site):
    response = site.get("/")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    page = site.get("/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert "server" not in page.headers
    assert "<script" not in page.text and " style=" not in page.text
    response = login(site)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert site.get("/").status_code == 200


def test_secure_cookie_option(tmp_path, smtp_sink):
    settings = web_settings(tmp_path / "state", smtp_sink.port, secure_cookies=True)
    parts = make_parts(settings)
    try:
        parts.accounts.add("alice", PASSWORD, "test")
        with TestClient(create_app(parts), base_url="https://testserver", follow_redirects=False) as client:
            assert "Secure" in login(client).headers["set-cookie"]
            assert "max-age" in client.get("/login").headers["strict-transport-security"]
    finally:
        close_parts(parts)


def test_login_form_without_its_token_is_refused_with_a_reference(site):
    response = site.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": "forged"})
    assert response.status_code == 403 and re.search(r"WEB-[0-9A-F]{12}", response.text)
    assert "mailward_session" not in response.headers.get("set-cookie", "")


def test_account_locks_after_ten_failures_until_unlocked(site):
    for _ in range(9):
        assert login(site, password="wrong password!").headers["location"] == "/login?problem=refused"
    assert login(site, password="wrong password!").headers["location"] == "/login?problem=locked"
    assert login(site).headers["location"] == "/login?problem=locked"  # the right password no longer helps
    assert "locked" in site.get("/login?problem=locked").text
    actions = [e.action for e in site.parts.accounts.events("alice")]
    assert "account-locked" in actions and actions.count("login-refused") == 10
    site.parts.accounts.unlock("alice", "test")
    assert login(site).headers["location"] == "/"


def test_guesses_sent_together_share_the_lockout_budget(tmp_path):
    """Thirty wrong guesses and the right one at once: at most ten are checked and none gets in."""
    checked: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            checked.append(str(password))
            time.sleep(0.02)  # a real hash takes this long: the guesses overlap
            return super().verify(hash, password)

    accounts = AccountStore(tmp_path / "web.sqlite3", hasher=Counting(time_cost=1, memory_cost=8192, parallelism=1))
    try:
        accounts.add("alice", PASSWORD, "test")
        guesses = [f"wrong guess {n:02}" for n in range(30)] + [PASSWORD]
        start = threading.Barrier(len(guesses))

        def guess(password: str) -> Login:
            start.wait()
            return accounts.login("alice", password, "test")[0]

        with ThreadPoolExecutor(len(guesses)) as pool:
            outcomes = list(pool.map(guess, guesses))
        assert len(checked) <= 10 and Login.OK not in outcomes
        assert accounts.is_locked("alice") and accounts.login("alice", PASSWORD, "test")[0] is Login.LOCKED
    finally:
        accounts.close()


def test_a_password_longer_than_the_login_form_takes_is_refused_when_set(site):
    with pytest.raises(AccountError, match="at most 1024"):
        site.parts.accounts.add("bob", "p" * 1025, "test")
    site.parts.accounts.add("bob", "p" * 1024, "test")
    assert login(site, name="bob", password="p" * 1500).headers["location"] == "/login?problem=refused"
    assert login(site, name="bob", password="p" * 1024).headers["location"] == "/"


def test_unknown_accounts_are_refused_like_wrong_passwords(site):
    assert login(site, name="mallory").headers["location"] == "/login?problem=refused"


def test_session_ends_after_the_idle_time(site, clock):
    login(site)
    clock.now += 299
    assert site.get("/").status_code == 200  # each request restarts the idle clock
    clock.now += 299
    assert site.get("/").status_code == 200
    clock.now += 301
    response = site.get("/")
    assert response.status_code == 303 and response.headers["location"] == "/login?problem=expired"
    assert "inactivity" in site.get("/login?problem=expired").text
    assert "session-expired" in [e.action for e in site.parts.accounts.events("alice")]


def test_release_needs_the_session_csrf_token_and_is_audited_as_the_web_user(site, smtp_sink):
    qid = put(site.settings, message("Quarterly figures"))
    login(site)
    assert site.post(f"/m/{qid}/release", data={"csrf": "nope"}).status_code == 403
    assert site.post(f"/m/{qid}/release").status_code == 403
    assert site.parts.service.get(qid).status is Status.HELD and smtp_sink.received == []
    response = site.post(f"/m/{qid}/release", data={"csrf": csrf_of(site, f"/m/{qid}")})
    assert response.headers["location"] == f"/m/{qid}?done=released"
    assert smtp_sink.received and smtp_sink.received[0][1] == ("bob@example.net",)
    release = [e for e in site.parts.service.history(qid) if e.action == "release"][0]
    assert release.actor.name == "web:alice" and release.actor.origin.startswith("http ")
    assert "Released to the original recipients." in site.get(response.headers["location"]).text


def test_malware_needs_force_from_the_web_too(site, smtp_sink):
    qid = put(site.settings, message("Invoice"), case=malware_case)
    login(site)
    token = csrf_of(site, f"/m/{qid}")
    assert site.post(f"/m/{qid}/release", data={"csrf": token}).headers["location"].endswith("needs-force")
    assert smtp_sink.received == []
    assert (
        site.post(f"/m/{qid}/release", data={"csrf": token, "force": "yes"}).headers["location"].endswith("=released")
    )


@pytest.mark.parametrize("verb", ["block-sender", "allow-sender"])
def test_a_sender_no_list_entry_could_match_is_not_listed(site, verb):
    qid = put(site.settings, message("Odd"), sender="ann smith@example.org")
    login(site)
    response = site.post(f"/m/{qid}/{verb}", data={"csrf": csrf_of(site, f"/m/{qid}")})
    assert response.headers["location"] == f"/m/{qid}?done=odd-sender"
    assert "nothing was changed" in site.get(response.headers["location"]).text
    incidents = open_incidents_store(site.settings)
    try:
        assert incidents.blocks(SubjectKind.SENDER) == [] and incidents.sender_entries() == []
    finally:
        incidents.close()


def test_label_delete_and_block_sender(site):
    qid = put(site.settings, message("Win big"))
    login(site)
    token = csrf_of(site, f"/m/{qid}")
    site.post(f"/m/{qid}/label", data={"csrf": token, "label": "phish"})
    assert site.parts.service.get(qid).label is Label.PHISH
    assert site.parts.service.store.labels_since(0)[-1].actor == "web:alice"
    assert site.post(f"/m/{qid}/label", data={"csrf": token, "label": "eggs"}).status_code == 400
    assert site.post(f"/m/{qid}/block-sender", data={"csrf": token}).headers["location"].endswith("=blocked")
    assert site.post(f"/m/{qid}/block-sender", data={"csrf": token}).headers["location"].endswith("already-blocked")
    incidents = open_incidents_store(site.settings)
    try:
        blocks = incidents.blocks(SubjectKind.SENDER)
    finally:
        incidents.close()
    assert [(b.value, b.created_by) for b in blocks] == [("alice@example.org", "web:alice")]
    assert site.post(f"/m/{qid}/delete", data={"csrf": token}).headers["location"] == "/?done=deleted"
    assert site.parts.service.get(qid) is None
    assert [e.action for e in site.parts.service.history(qid)][-1] == "delete"


def test_list_filters_and_hostile_content_is_escaped(site):
    hostile = put(site.settings, hostile_message("http://127.0.0.1:9"))
    put(site.settings, message("Plain one"), recipients=("carol@example.net",))
    login(site)
    listing = site.get("/", params={"recipient": "carol"}).text
    assert "Plain one" in listing and "Invoice" not in listing
    page = site.get(f"/m/{hostile}").text
    assert (
        "<script" not in page
        and "<iframe" not in page
        and "<img" not in page
        and "onerror=" not in page.replace("onerror=&#34;", "")
    )
    assert "&lt;script&gt;document.title=&#39;pwned&#39;" in page  # shown as source
    assert "\\u202e" in page  # the bidi override made visible
    assert re.search(r"[0-9a-f]{64}", page)  # part hashes
    assert "show" in [e.action for e in site.parts.service.history(hostile)]


def test_error_pages_give_a_reference_never_internals(site, caplog):
    client = TestClient(site.app, raise_server_exceptions=False, follow_redirects=False)  # as a browser sees it
    login(client)
    missing = client.get("/m/MW-NOPE-1")
    assert missing.status_code == 404 and "WEB-" in missing.text
    assert client.get("/m/..%2f..%2fetc").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    with sqlite3.connect(site.settings.quarantine_dir / "quarantine.sqlite3") as db:
        db.execute("DROP TABLE quarantine")  # a real failure inside the store
    broken = client.get("/")
    reference = re.search(r"WEB-[0-9A-F]{12}", broken.text)[0]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)  # the details: in the log
    assert broken.status_code == 500 and re.search(r"WEB-[0-9A-F]{12}", broken.text)
    assert "quarantine" not in broken.text.lower().replace("mailward quarantine", "")
    assert "Traceback" not in broken.text and "sqlite" not in broken.text.lower()


def test_a_recipient_link_shows_only_their_own_spam_and_releases_it(site, smtp_sink, clock):
    mine = put(site.settings, message("Newsletter"))
    virus = put(site.settings, message("Invoice virus"), case=malware_case)
    shared = put(site.settings, message("To the team"), recipients=("bob@example.net", "carol@example.net"))
    other = put(site.settings, message("Carol only"), recipients=("carol@example.net",))
    key = site.parts.link_key
    clock.now = time.time()  # the digest goes out right after
    token = sign_link(key, new_link("Bob@Example.net", "", clock.now, 7))
    page = site.get(f"/r/{token}").text
    assert "Newsletter" in page and "To the team" in page
    assert "Invoice virus" not in page and "Carol only" not in page and virus not in page and other not in page
    csrf = CSRF.search(page)[1]
    assert site.post(f"/r/{token}/release", data={"id": mine, "csrf": "x"}).status_code == 403
    assert site.post(f"/r/{token}/release", data={"id": virus, "csrf": csrf}).headers["location"].endswith("=not-found")
    assert site.post(f"/r/{token}/release", data={"id": shared, "csrf": csrf}).headers["location"].endswith("=shared")
    assert site.post(f"/r/{token}/release", data={"id": mine, "csrf": csrf}).headers["location"].endswith("=released")
    assert [rcpts for _, rcpts, _ in smtp_sink.received] == [("bob@example.net",)]
    release = [e for e in site.parts.service.history(mine) if e.action == "release"][0]
    assert release.actor.name == "web:recipient bob@example.net"

    single = sign_link(key, new_link("bob@example.net", shared, clock.now, 7))
    assert (
        site.post(
            f"/r/{single}/release", data={"id": mine, "csrf": CSRF.search(site.get(f"/r/{single}").text)[1]}
        ).status_code
        == 403
    )  # a message link covers that message only
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert site.get(f"/r/{tampered}").status_code == 403
    clock.now += 8 * 86400
    assert site.get(f"/r/{token}").status_code == 403  # expired


def test_user_commands_add_change_and_unlock(tmp_path, monkeypatch, capsys):
    import io

    from mailward.cli.main import main
    from mailward.web.server import open_accounts

    state = ["--state-dir", str(tmp_path / "state")]

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main([*state, "web", "user", *argv])

    assert run("add", "alice", "--password-stdin", stdin="short\n") == 1
    assert "at least 12" in capsys.readouterr().err
    assert run("add", "Alice/../x", "--password-stdin", stdin=PASSWORD + "\n") == 1
    assert run("add", "alice", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert run("add", "alice", "--password-stdin", stdin=PASSWORD + "\n") == 1  # exists
    settings = web_settings(tmp_path / "state", 25, lockout_after=2)
    accounts = open_accounts(settings)
    try:
        accounts.login("alice", "wrong wrong wrong", "test")
        accounts.login("alice", "wrong wrong wrong", "test")
        assert accounts.is_locked("alice")
        assert run("unlock", "alice") == 0 and not accounts.is_locked("alice")
        assert run("passwd", "alice", "--password-stdin", stdin="a new long password\n") == 0
        assert accounts.login("alice", PASSWORD, "test")[0].value == "refused"
        assert accounts.login("alice", "a new long password", "test")[0].value == "ok"
        assert run("unlock", "nobody") == 1
        actions = [e.action for e in accounts.events("alice")]
        assert {"account-add", "account-locked", "account-unlock", "account-passwd", "login"} <= set(actions)
    finally:
        accounts.close()


def test_web_settings_are_validated_where_they_are_loaded():
    from mailward.config import load_settings
    from mailward.errors import ConfigError

    for web, key in (
        ({"listen": "nowhere"}, "web.listen"),
        ({"base_url": "ftp://x"}, "web.base_url"),
        ({"session_idle": 0}, "web.session_idle"),
        ({"lockout_after": 0}, "web.lockout_after"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_settings(overrides={"web": web})


def test_logout_ends_the_session_and_needs_the_token(site):
    login(site)
    token = csrf_of(site, "/")
    site.post("/logout", data={"csrf": "forged"})
    assert site.get("/").status_code == 200  # a forged logout changes nothing
    assert site.post("/logout", data={"csrf": token}).headers["location"].startswith("/login")
    assert site.get("/").status_code == 303
    assert "logout" in [e.action for e in site.parts.accounts.events("alice")]


def _sender_entries(settings, scope):
    from mailward.incidents import open_incidents

    incidents = open_incidents(settings)
    try:
        return [(e.listed.value, e.sender, e.scope, e.created_by) for e in incidents.sender_entries(scope)]
    finally:
        incidents.close()


def test_analyst_allows_a_sender_for_everyone(site):
    qid = put(site.settings, message("Weekly report"))
    login(site)
    token = csrf_of(site, f"/m/{qid}")
    assert site.post(f"/m/{qid}/allow-sender", data={"csrf": token}).headers["location"].endswith("=allowed")
    assert site.post(f"/m/{qid}/allow-sender", data={"csrf": token}).headers["location"].endswith("=already-listed")
    assert _sender_entries(site.settings, "") == [("allow", "alice@example.org", "", "web:alice")]
    assert "allow-sender" in [e.action for e in site.parts.service.history(qid)]


def test_a_recipient_allows_or_blocks_a_sender_for_themselves_only(site, clock):
    allowed = put(site.settings, message("Newsletter"))
    blocked = put(site.settings, message("Junk"), sender="junk@spam.test")
    virus = put(site.settings, message("Invoice virus"), case=malware_case)
    clock.now = time.time()
    token = sign_link(site.parts.link_key, new_link("bob@example.net", "", clock.now, 7))
    csrf = CSRF.search(site.get(f"/r/{token}").text)[1]
    assert site.post(f"/r/{token}/sender", data={"id": allowed, "choice": "allow", "csrf": "x"}).status_code == 403
    assert (
        site.post(f"/r/{token}/sender", data={"id": virus, "choice": "allow", "csrf": csrf})
        .headers["location"]
        .endswith("=not-found")
    )  # never through malware
    assert (
        site.post(f"/r/{token}/sender", data={"id": allowed, "choice": "allow", "csrf": csrf})
        .headers["location"]
        .endswith("=allowed")
    )
    assert _sender_entries(site.settings, "bob@example.net") == [
        ("allow", "alice@example.org", "bob@example.net", "web:recipient bob@example.net")
    ]
    assert _sender_entries(site.settings, "") == []  # nobody else's mail changes
    assert (
        site.post(f"/r/{token}/sender", data={"id": blocked, "choice": "block", "csrf": csrf})
        .headers["location"]
        .endswith("=blocked")
    )
    assert (
        site.post(f"/r/{token}/sender", data={"id": blocked, "choice": "allow", "csrf": csrf})
        .headers["location"]
        .endswith("=already-listed")
    )  # one entry per sender and scope
    assert ("block", "junk@spam.test", "bob@example.net", "web:recipient bob@example.net") in _sender_entries(
        site.settings, "bob@example.net"
    )
