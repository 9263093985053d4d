"""Fragile parsers run in a child process with a hard time and memory limit.

olefile, PDF parsers and pure-Python archive readers can loop or balloon on
crafted input, and a thread cannot be stopped. One long-lived child per
scanner keeps the cost per document at a pipe round trip; on a timeout or a
crash its whole process group (with any unar it started) is killed and the
next call starts a fresh child. Answers travel as JSON plus raw bytes, never
pickle: a child subverted by its input cannot run code in the scanner.

Run as ``python -m mailward.unpack.sandbox MEMORY_BYTES TIMEOUT`` by :class:`Sandbox` only.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .model import Allowance, Stop, Unpacked, stopped
from .sniff import Kind

log = logging.getLogger(__name__)
_LENGTH = struct.Struct(">I")
START_TIMEOUT = 60.0  # importing oletools, pikepdf and py7zr on a busy machine


class Sandbox:
    """A lazily started child that runs one handler call at a time."""

    def __init__(self, timeout: float, memory: int):
        self.timeout = timeout
        self.memory = memory
        self._process: subprocess.Popen[bytes] | None = None
        self._greeted = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the child now and return without waiting for it: it boots (imports its parsers)
        while the caller loads other things; the first call then waits only for what is left."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                try:
                    self._spawn()
                except OSError as exc:  # the first call tries again, and reports it
                    log.warning("parser sandbox could not be started early: %s", exc)

    def run(self, kind: Kind, data: bytes, name: str, allowance: Allowance) -> Unpacked:
        with self._lock:
            try:
                process = self._started()
            except (OSError, TimeoutError, EOFError, ValueError) as exc:
                self._kill()
                log.error("parser sandbox did not start: %s", exc)
                return stopped(Stop.CRASH, "parser sandbox did not start")
            request = {
                "kind": kind.value,
                "name": name,
                "allowance": {
                    "bytes": allowance.bytes,
                    "members": allowance.members,
                    "max_ratio": allowance.max_ratio,
                    "ratio_floor": allowance.ratio_floor,
                    "passwords": list(allowance.passwords),
                    "seconds": allowance.seconds,
                    "password_trials": allowance.password_trials,
                    "password_seconds": allowance.password_seconds,
                },
            }
            deadline = time.monotonic() + self.timeout
            try:
                stdin, stdout = _pipes(process)
                write_frame(stdin, request, [data])
                answer, blobs = read_frame(stdout.fileno(), deadline)
            except TimeoutError:
                self._kill()
                return stopped(Stop.TIMEOUT, f"{kind.value} parser ran more than {self.timeout:g}s")
            except (OSError, EOFError, ValueError) as exc:
                code = self._kill()
                return stopped(Stop.CRASH, f"{kind.value} parser died ({code if code is not None else exc})")
            if not answer.get("ok"):
                return stopped(Stop.CORRUPT, str(answer.get("error", ""))[:300])
            try:
                return Unpacked.from_dict(answer["result"], blobs)
            except (KeyError, ValueError, TypeError):
                self._kill()
                return stopped(Stop.CRASH, f"{kind.value} parser sent a malformed answer")

    def close(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            if process is None:
                return
            try:
                _pipes(process)[0].close()
                process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                _kill_group(process)

    def _started(self) -> subprocess.Popen[bytes]:
        """The running child, started (or restarted) and greeted if need be."""
        process = self._process
        if process is None or process.poll() is not None:
            process = self._spawn()
        if not self._greeted:
            hello, _ = read_frame(_pipes(process)[1].fileno(), time.monotonic() + START_TIMEOUT)
            if not hello.get("ready"):
                raise ValueError("unexpected greeting")
            self._greeted = True
        return process

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        source_root = str(Path(__file__).resolve().parents[2])  # the directory that holds "mailward"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (source_root, env.get("PYTHONPATH"))))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mailward.unpack.sandbox", str(self.memory), str(self.timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        self._greeted = False
        return self._process

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        return _kill_group(process) if process is not None else None


def _pipes(process: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    """The child's stdin and stdout: always piped, so None is a bug, raised as the OSError callers handle."""
    if process.stdin is None or process.stdout is None:
        raise OSError("parser sandbox has no pipes")
    return process.stdin, process.stdout


def _kill_group(process: subprocess.Popen[bytes]) -> int | None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None
    finally:
        for pipe in (process.stdin, process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


def write_frame(stream: IO[bytes], header: dict[str, Any], blobs: list[bytes]) -> None:
    encoded = json.dumps(dict(header, blobs=[len(b) for b in blobs])).encode()
    stream.write(b"".join([_LENGTH.pack(len(encoded)), encoded, *blobs]))  # one write: one wake-up
    stream.flush()


def read_frame(fd: int, deadline: float | None) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame from ``fd``; TimeoutError past ``deadline`` (None: wait for ever)."""
    (size,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, deadline))
    header = json.loads(_read_exact(fd, size, deadline))
    sizes = header.pop("blobs")
    blob = _read_exact(fd, sum(sizes), deadline)
    blobs, offset = [], 0
    for n in sizes:
        blobs.append(blob[offset : offset + n])
        offset += n
    return header, blobs


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        piece = os.read(fd, min(size - len(buf), 1 << 20))
        if not piece:
            raise EOFError("sandbox pipe closed")
        buf += piece
    return bytes(buf)


def _serve(memory: int, timeout: float) -> None:
    """The child's loop: one request in, one answer out, until the parent closes stdin.

    Each request also arms SIGALRM (default action: terminate) at twice the
    parent's timeout, so a child whose parent was killed cannot spin for ever,
    and an idle child exits as soon as its parent is gone (a killed worker's
    pipe may still be held open by a sibling).
    """
    import resource

    from ..lifetime import exit_with_parent
    from .handlers import HANDLERS

    exit_with_parent()

    # The worker's per-message CPU limit was inherited; this child has its own time limit.
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))

    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # libraries that print must not corrupt the frames
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    functions = {kind: h.load() for kind, h in HANDLERS.items() if h.isolated}
    write_frame(answers, {"ready": True}, [])
    requests = sys.stdin.fileno()
    while True:
        try:
            request, blobs = read_frame(requests, None)
        except EOFError:
            return
        allowance = Allowance(**dict(request["allowance"], passwords=tuple(request["allowance"]["passwords"])))
        signal.alarm(int(2 * timeout) + 1)
        try:
            result = functions[Kind(request["kind"])](blobs[0], request["name"], allowance)
        except MemoryError:
            write_frame(answers, {"ok": False, "error": "MemoryError: parser memory limit"}, [])
            continue
        except Exception as exc:  # a parser bug on hostile input is a finding, not the end of the child
            write_frame(answers, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}, [])
            continue
        finally:
            signal.alarm(0)
        write_frame(answers, {"ok": True, "result": result.as_dict()}, [m.data for m in result.members])


if __name__ == "__main__":
    _serve(int(sys.argv[1]), float(sys.argv[2]))
