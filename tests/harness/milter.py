"""Run `mailward-milter` as a real process with a given configuration."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


class MilterProcess:
    def __init__(self, config: Path, socket_path: Path, log_path: Path, prefix: tuple[str, ...] = ()):
        """``prefix``: a command the milter runs under, e.g. a private mount namespace."""
        self.config, self.socket_path, self.log_path = config, socket_path, log_path
        self.prefix = tuple(prefix)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "mailward.milter.daemon", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milter exited with {self.proc.returncode}: {self.proc.stdout.read().decode()}")
            if unix_listening(self.socket_path):
                return
            time.sleep(0.05)
        raise RuntimeError("the milter did not listen on its socket")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is not None:
                return self.proc.returncode
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            self.proc.stdout.close()  # the pipe is ours to close, exited or not

    def events(self) -> list[dict]:
        """The per-message summary events from the JSON log."""
        if not self.log_path.exists():
            return []
        docs = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        return [d for d in docs if "mailward" in d]

    def event_where(self, predicate, timeout: float = 10.0) -> dict | None:
        """The first summary event for which ``predicate(event)`` holds, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.1)
        return None

    def event_for(self, message_id_fragment: str, timeout: float = 10.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("email", {}).get("local_id") and message_id_fragment in json.dumps(event):
                    return event
            time.sleep(0.1)
        return None


def unix_listening(path: Path) -> bool:
    """Whether some process listens on the unix socket ``path`` (its file exists from bind(2), before
    listen(2): a connection in between is refused). Read from /proc/net/unix, so no test connects."""
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & _SO_ACCEPTCON:
                return True
    return False


_SO_ACCEPTCON = 0x10000  # the Flags column of /proc/net/unix for a listening socket
