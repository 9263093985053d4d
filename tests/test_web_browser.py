"""The quarantine web page in a real browser: Debian's headless Chromium against `mailward web`.

One browser and one server (the real CLI, `mailward web --listen`, over a real
store and SMTP sink) for the module. Screenshots go to the test's temporary
directory (the path is printed; run pytest with ``-s`` to see it).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from quarantine_support import SmtpSink, malware_case, message
from real_parts import require
from web_support import PASSWORD, hostile_message, put, web_settings

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MAILWARD = str(Path(sys.executable).with_name("mailward"))


class Beacon:
    """A loopback HTTP server that records every request: hostile mail points its remote content here."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the http.server protocol)
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"mailward web exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("mailward web did not start listening")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots in {where}")
    return where


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Chromium not installed (apt packages chromium and chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`mailward web` serving a state directory with two analysts; yields (base URL, settings, sink, beacon)."""
    tmp = tmp_path_factory.mktemp("web")
    sink = SmtpSink().__enter__()
    beacon = Beacon()
    port = _free_port()
    state = tmp / "state"
    config = tmp / "mailward.toml"
    config.write_text(
        f'state_dir = "{state}"\n[quarantine]\nrelay_port = {sink.port}\nrelay_timeout = 10.0\n'
        f'[web]\nlisten = "127.0.0.1:{port}"\n[logging]\nfile = "{tmp / "web.log"}"\n'
    )
    for name in ("alice", "bruno"):
        subprocess.run(
            [MAILWARD, "--config", str(config), "web", "user", "add", name, "--password-stdin"],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
    proc = subprocess.Popen(
        [MAILWARD, "--config", str(config), "web"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", web_settings(state, sink.port), sink, beacon
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        beacon.close()
        sink.__exit__(None, None, None)


def _submit(browser, button) -> None:
    """Click a form's button and wait until the page it leads to has loaded.

    The old page gets a marker on its ``window``; the new document has none.
    Errors while the browser is between documents only mean "not yet".
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.mailwardOldPage = true")

    def loaded(driver) -> bool:
        try:
            return driver.execute_script("return !window.mailwardOldPage && document.readyState === 'complete'")
        except WebDriverException:
            return False

    button.click()
    WebDriverWait(browser, 20).until(loaded)


def _login(browser, base: str, name: str = "alice", password: str = PASSWORD) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    _submit(browser, browser.find_element(By.ID, "login"))


def test_lockout_after_ten_failed_logins(browser, site, shots):
    from selenium.webdriver.common.by import By

    base = site[0]
    for attempt in range(1, 11):
        _login(browser, base, "bruno", "not the password")
        problem = browser.find_element(By.ID, "problem").text
        assert ("locked" in problem) == (attempt == 10), (attempt, problem)
    _login(browser, base, "bruno")  # the right password, too late
    assert "locked" in browser.find_element(By.ID, "problem").text
    browser.save_screenshot(str(shots / "01-locked.png"))
    assert browser.current_url.startswith(f"{base}/login")


def test_log_in_list_and_view_a_hostile_message_inertly(browser, site, shots):
    from selenium.webdriver.common.by import By

    base, settings, _, beacon = site
    qid = put(settings, hostile_message(beacon.url))
    _login(browser, base)
    assert browser.current_url == f"{base}/"
    rows = browser.find_elements(By.CSS_SELECTOR, "#messages tbody tr")
    assert any(qid in r.find_element(By.CSS_SELECTOR, "a").get_attribute("href") for r in rows)
    browser.save_screenshot(str(shots / "02-list.png"))

    browser.get(f"{base}/m/{qid}")
    body = browser.find_element(By.ID, "text-2").text
    assert "<script>document.title='pwned'" in body and "onerror" in body  # shown as source text
    assert "<script>alert(1)</script> Invoice" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.title.endswith("· Mailward") and "pwned" not in browser.title
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert browser.find_elements(By.TAG_NAME, "iframe") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert "\\u202e" in browser.find_element(By.ID, "headers").text  # the bidi override made visible
    browser.save_screenshot(str(shots / "03-hostile-message.png"))
    assert beacon.hits == []  # nothing remote was loaded


def test_release_and_label_from_the_message_page(browser, site, shots):
    from selenium.webdriver.common.by import By

    base, settings, sink, _ = site
    qid = put(settings, message("Board minutes"), recipients=("dana@example.net",))
    virus = put(settings, message("Invoice"), recipients=("dana@example.net",), case=malware_case)
    _login(browser, base)
    browser.get(f"{base}/m/{qid}")
    _submit(browser, browser.find_element(By.ID, "label-phish"))
    assert browser.find_element(By.ID, "label").text == "phish"
    _submit(browser, browser.find_element(By.ID, "release"))
    assert "Released" in browser.find_element(By.ID, "notice").text
    assert browser.find_element(By.ID, "status").text.startswith("released")
    assert any(rcpts == ("dana@example.net",) for _, rcpts, _ in sink.received)
    history = browser.find_element(By.ID, "history").text
    assert "release" in history and "web:alice" in history and "label" in history
    browser.save_screenshot(str(shots / "04-released.png"))

    browser.get(f"{base}/m/{virus}")
    _submit(browser, browser.find_element(By.ID, "release"))  # malware without "force"
    assert "malware" in browser.find_element(By.ID, "notice").text
    assert browser.find_element(By.ID, "status").text == "held"
    browser.save_screenshot(str(shots / "05-malware-refused.png"))


def test_a_session_cookie_is_not_readable_by_scripts(browser, site):
    base = site[0]
    _login(browser, base)
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    cookie = browser.get_cookie("mailward_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_recipient_releases_their_spam_from_the_digest_link(browser, site, shots):
    from selenium.webdriver.common.by import By

    from mailward.marks import load_release_key
    from mailward.quarantine.links import link_key_path, new_link, sign_link

    base, settings, sink, _ = site
    spam = put(settings, message("Conference offer"), recipients=("erin@example.net",))
    virus = put(settings, message("Invoice"), recipients=("erin@example.net",), case=malware_case)
    token = sign_link(load_release_key(link_key_path(settings)), new_link("erin@example.net", "", time.time(), 7))
    browser.delete_all_cookies()  # no analyst session: the link alone
    browser.get(f"{base}/r/{token}")
    table = browser.find_element(By.ID, "messages").text
    assert "Conference offer" in table and "Invoice" not in table and virus not in browser.page_source
    browser.save_screenshot(str(shots / "06-recipient-page.png"))
    _submit(browser, browser.find_element(By.ID, f"release-{spam}"))
    assert "Released" in browser.find_element(By.ID, "notice").text
    assert any(rcpts == ("erin@example.net",) for _, rcpts, _ in sink.received)
    browser.save_screenshot(str(shots / "07-recipient-released.png"))
