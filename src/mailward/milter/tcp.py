"""TCP options for an ``inet:`` milter socket, which libmilter opens and accepts without our help.

libmilter leaves Nagle's algorithm on: a reply written in several small pieces
(end of message with header changes) waits for the MTA's delayed ACK, 40 ms on
Linux, every message. Linux copies TCP_NODELAY from a listening socket to each
socket it accepts, so setting it once on libmilter's listener covers every
connection; the listener is found among this process's own descriptors by its
port, because libmilter does not hand it out.
"""

from __future__ import annotations

import os
import socket

_FD_DIR = "/proc/self/fd"


def _our_tcp_sockets(port: int) -> list[socket.socket]:
    """Our TCP sockets bound locally to ``port`` (as duplicates: closing them leaves libmilter's open)."""
    found = []
    for name in os.listdir(_FD_DIR):
        try:
            if not os.readlink(f"{_FD_DIR}/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed meanwhile, or the listing's own descriptor
            continue
        try:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[1] == port
            ):
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def set_nodelay(port: int) -> bool:
    """TCP_NODELAY on the listener on ``port`` and on any connection it accepted already.

    The listener first, so a connection accepted while this runs inherits it
    or is found among the accepted ones. False if no listener was found.
    """
    sockets = _our_tcp_sockets(port)
    try:
        listening = [s for s in sockets if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
        for sock in listening:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if listening:
            for sock in _our_tcp_sockets(port):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                finally:
                    sock.close()
        return bool(listening)
    finally:
        for sock in sockets:
            sock.close()
