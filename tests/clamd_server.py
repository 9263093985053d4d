"""A real clamd (Debian clamav-daemon) on a private unix socket with a database the tests write.

No signature download is needed or possible: the database holds EICAR (an MD5
signature, .hdb) and Mailward's own body markers (.ndb). clamd refuses to start
without a signature, and loads these in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from real_parts import require
from support.mail import EICAR

MARKER = b"MAILWARD-CLAMAV-TEST-MARKER"  # any file with these bytes is MailwardTest.Marker-1
MARKER_SIGNATURE = "MailwardTest.Marker-1.UNOFFICIAL"  # clamd marks signatures of unsigned databases
EICAR_SIGNATURE = "Eicar-Test-Signature.UNOFFICIAL"
START_TIMEOUT = 60.0


def clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if os.access(p, os.X_OK)), None)


@dataclass
class Clamd:
    directory: Path
    process: subprocess.Popen

    @property
    def socket(self) -> str:
        return f"unix:{self.directory / 'clamd.sock'}"

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nobody answers (a hung clamd)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_clamd(directory: Path, stream_max_length: str = "1M", extra: tuple[str, ...] = ()) -> Clamd:
    """Write the database and configuration (``extra``: more clamd.conf lines) under ``directory``
    and start clamd in the foreground."""
    binary = clamd_binary()
    require(binary is not None, "clamd (Debian clamav-daemon) is not installed")
    database = directory / "db"
    database.mkdir(parents=True, exist_ok=True)
    (database / "mailward-test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Eicar-Test-Signature\n")
    (database / "mailward-test.ndb").write_text(f"MailwardTest.Marker-1:0:*:{MARKER.hex()}\n")
    config = directory / "clamd.conf"
    config.write_text(
        "\n".join(
            [
                f"LocalSocket {directory / 'clamd.sock'}",
                f"DatabaseDirectory {database}",
                f"LogFile {directory / 'clamd.log'}",
                f"PidFile {directory / 'clamd.pid'}",
                "Foreground true",
                f"StreamMaxLength {stream_max_length}",
                "MaxThreads 8",
                "SelfCheck 0",
                *extra,
                "",
            ]
        )
    )
    if os.getuid() == 0:
        config.write_text(config.read_text() + "User root\n")
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    server = Clamd(directory, process)
    from mailward.signatures.clamav import Clamd as Client
    from mailward.signatures.clamav import ClamdError

    client = Client(str(directory / "clamd.sock"), timeout=2.0)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            log = (directory / "clamd.log").read_text(errors="replace") if (directory / "clamd.log").exists() else ""
            raise RuntimeError(
                f"clamd exited with {process.returncode}: {process.stderr.read().decode()} {log[-2000:]}"
            )
        try:
            if client.ping():
                return server
        except ClamdError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("clamd did not answer PING in time")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory):
    """One clamd for the whole test session (its database loads once)."""
    server = start_clamd(tmp_path_factory.mktemp("clamd"))
    yield server
    server.stop()
