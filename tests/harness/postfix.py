"""A throwaway Postfix instance on 127.0.0.1, configured from scratch for a test session.

It uses its own config, queue and mail directories (``postfix -c DIR``), so the
machine's own Postfix configuration is never touched. Two SMTP services: an
inbound one and a submission-like one that tags its mail ORIGINATING (the
conventional ``milter_macro_daemon_name`` for mail from the organisation).
Everything is delivered by virtual(8) into one Maildir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path


def wait_for(predicate, timeout: float = 20.0):
    """``predicate()`` once it is truthy, polling until ``timeout``; then its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postfix:
    base: Path
    smtp_port: int
    submission_port: int
    milter_socket: Path

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    @property
    def maildir(self) -> Path:
        return self.base / "mail" / "mailbox"

    @classmethod
    def create(cls, milter_socket: Path) -> Postfix:
        base = Path(tempfile.mkdtemp(prefix="mailward-postfix-", dir="/tmp"))
        os.chmod(base, 0o755)
        pf = cls(base, free_port(), free_port(), milter_socket)
        for sub in ("conf", "queue", "data", "mail"):
            (base / sub).mkdir()
        shutil.copy("/etc/postfix/master.cf", pf.conf / "master.cf")
        shutil.chown(base / "mail", "nobody", "nogroup")
        shutil.chown(base / "data", "postfix")
        (pf.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
myhostname = mx.mailward.test
mydomain = mailward.test
myorigin = mailward.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
virtual_mailbox_domains = example.test remote.test
virtual_mailbox_base = {base}/mail
virtual_mailbox_maps = static:mailbox/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
alias_maps =
alias_database =
smtputf8_enable = no
smtpd_milters = unix:{milter_socket}
non_smtpd_milters = $smtpd_milters
milter_protocol = 6
milter_default_action = tempfail
milter_connect_timeout = 5s
milter_command_timeout = 15s
milter_content_timeout = 30s
queue_run_delay = 1s
minimal_backoff_time = 1s
""")
        pf._postconf("-MX", "smtp/inet")
        pf._postconf("-M", f"127.0.0.1:{pf.smtp_port}/inet=127.0.0.1:{pf.smtp_port} inet n - n - - smtpd")
        pf._postconf(
            "-M",
            f"127.0.0.1:{pf.submission_port}/inet=127.0.0.1:{pf.submission_port} inet n - n - - smtpd"
            " -o syslog_name=postfix/submission -o milter_macro_daemon_name=ORIGINATING",
        )
        pf._postconf("-F", "*/*/chroot = n")
        return pf

    def configure(self, *assignments: str) -> None:
        """Set main.cf parameters (``name = value``) before :meth:`start`."""
        self._postconf("-e", *assignments)

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.conf), *args], check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "start"], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not listen on {self.smtp_port}: {self.log()[-2000:]}")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.base / "postfix.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- sending and observing -----------------------------------------
    def send(
        self,
        raw: bytes,
        mail_from: str = "sender@example.org",
        rcpts: tuple[str, ...] = ("user@example.test",),
        port: int | None = None,
    ) -> tuple[int, str]:
        """Send over SMTP; returns the final (code, text) of the DATA phase or the failing command."""
        with smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=60) as smtp:
            smtp.ehlo("client.example.org")
            try:
                smtp.sendmail(mail_from, list(rcpts), raw)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error.decode(errors="replace")
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                return code, text.decode(errors="replace")
            except smtplib.SMTPSenderRefused as exc:
                return exc.smtp_code, exc.smtp_error.decode(errors="replace")
            code, text = smtp.noop()
            return 250, "queued"

    def delivered(self, message_id: str, timeout: float = 15.0) -> Message | None:
        """The delivered copy of the message with this Message-ID, waiting up to ``timeout``."""
        raw = self.delivered_bytes(message_id, timeout)
        return message_from_bytes(raw) if raw is not None else None

    def delivered_bytes(self, message_id: str, timeout: float = 15.0) -> bytes | None:
        """The delivered copy as Postfix wrote it (the parsed form hides how headers were spaced)."""
        deadline = time.monotonic() + timeout
        while True:
            for path in (self.maildir / "new").glob("*") if (self.maildir / "new").exists() else ():
                raw = path.read_bytes()
                if message_from_bytes(raw).get("Message-ID", "").strip() == message_id:
                    return raw
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def milter_action(self, message_id: str, timeout: float = 30.0) -> str:
        """What the milter had Postfix do with the message of ``message_id``, from Postfix's own log:
        "reject" (a 5xx or 4xx at end of message), "discard" or "hold"; "" when it went on to the queue.

        Waits for that line, not for a time: once Postfix logs a reject or discard the queue file is
        gone, so the message can never reach a mailbox; a held one waits in the hold queue.
        """
        return self.milter_actions(message_id, 1, timeout)[0]

    def milter_actions(self, message_id: str, count: int, timeout: float = 30.0) -> list[str]:
        """:meth:`milter_action` for each of the first ``count`` messages sent with ``message_id``, in order."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            actions = []
            for queue_id in re.findall(rf"(\w+): message-id={re.escape(message_id)}\s*$", log, re.M)[:count]:
                action = re.search(rf"{queue_id}: milter-(reject|discard|hold): ", log)
                if action:
                    actions.append(action.group(1))
                elif re.search(rf"{queue_id}: from=<.*\(queue active\)", log):
                    actions.append("")
            if len(actions) == count:
                return actions
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix logged no outcome for {message_id}: {log[-3000:]}")
            time.sleep(0.05)

    def refused_before_data(self, mail_from: str, timeout: float = 30.0) -> str:
        """Postfix's log line refusing the transaction of ``mail_from`` before DATA (no queue file was made)."""
        line = wait_for(
            lambda: re.search(rf"NOQUEUE: \S+: \w+ from .*from=<{re.escape(mail_from)}>.*", self.log()), timeout
        )
        if not line:
            raise AssertionError(f"Postfix logged no refusal for {mail_from}: {self.log()[-3000:]}")
        return line.group(0)

    def queue(self, name: str | None = None) -> list[dict]:
        out = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], check=True, capture_output=True, text=True)
        entries = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return [e for e in entries if name is None or e.get("queue_name") == name]
