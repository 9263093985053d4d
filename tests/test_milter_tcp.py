"""An ``inet:`` milter socket as fast as a unix one: no Nagle stall in either direction."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time

from harness.milter_client import NODATA, NR_BODY, NR_DATA, NR_HDR, MilterSession
from harness.postfix import free_port
from mailward.milter.tcp import set_nodelay
from support.mail import message

_PIDFD_GETFD = 438  # x86-64 and arm64 system call number


def _nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_nodelay_reaches_the_listener_and_what_it_accepted_before_and_after():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        early_client = socket.create_connection(("127.0.0.1", port))
        early, _ = listener.accept()
        assert not _nodelay(early) and not _nodelay(listener)
        assert set_nodelay(port)
        late_client = socket.create_connection(("127.0.0.1", port))
        late, _ = listener.accept()
        try:
            assert _nodelay(listener) and _nodelay(early) and _nodelay(late)
            assert not _nodelay(early_client) and not _nodelay(late_client)  # only our side of our port
        finally:
            for sock in (early_client, early, late_client, late):
                sock.close()


def test_no_listener_on_the_port_is_reported():
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = free_port()
        assert other.getsockname()[1] != port
        assert not set_nodelay(port)
        assert not _nodelay(other)


def _their_socket(pid: int, port: int) -> socket.socket:
    """A duplicate of the milter process's accepted socket on ``port`` (root may take one with pidfd_getfd)."""
    pidfd = os.pidfd_open(pid)
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            fd = libc.syscall(_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            if (
                sock.family == socket.AF_INET
                and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[1] == port
                and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                return sock
            sock.close()
    finally:
        os.close(pidfd)
    raise AssertionError("the milter holds no accepted connection on its port")


def test_an_inet_milter_answers_data_sets_nodelay_and_screens(tmp_path):
    port = free_port()
    log = tmp_path / "milter.log"
    cfg = tmp_path / "mailward.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[milter]\nsocket = "inet:{port}@127.0.0.1"\nworkers = 1\n'
        f'[reputation]\nenabled = false\n[logging]\nfile = "{log}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while "mailward-milter listening" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the milter did not start"
            time.sleep(0.05)
        with MilterSession(("127.0.0.1", port)) as session:
            protocol = session.negotiate()
            # DATA is sent and answered (its macros are no lone write); headers and body stay unanswered.
            assert not protocol & (NODATA | NR_DATA)
            assert protocol & NR_HDR and protocol & NR_BODY
            with _their_socket(proc.pid, port) as accepted:
                assert _nodelay(accepted)
            assert session.connect() == b"c"
            session.helo()
            code, changes = session.message(message()[1])
            assert code == b"a"
            assert any(cmd == b"h" and data.startswith(b"X-Mailward-Verdict\0") for cmd, data in changes)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
