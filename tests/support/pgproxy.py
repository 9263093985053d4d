"""A TCP relay on loopback between the store and the test PostgreSQL, to break the network on cue.

``stall()`` stops relaying in both directions (a blackholed network, a stopped
server: connections stay open, nothing answers); ``lose_reply_to(b"COMMIT")``
relays the next such statement to the server and then ends the connection
before the server's answer comes back.
"""

from __future__ import annotations

import socket
import threading
import time

from psycopg.conninfo import conninfo_to_dict, make_conninfo

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-protocol message psycopg sends for commit()


class PgProxy:
    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self._upstream = (params.get("host", "127.0.0.1"), int(params.get("port", 5432)))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self._listener.getsockname()[1]))
        self._stalled = threading.Event()
        self._lose: bytes | None = None
        self._sockets: list[socket.socket] = []
        self._muted: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def lose_reply_to(self, message: bytes) -> None:
        self._lose = message

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket, outgoing: bool) -> None:
        try:
            while data := src.recv(65536):
                while self._stalled.is_set():
                    time.sleep(0.05)
                if outgoing and self._lose is not None and self._lose in data:
                    self._lose = None
                    self._muted.add(dst)  # the server's answer is dropped on its way back
                    dst.sendall(data)
                    time.sleep(0.3)  # the server acts on it
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                    return
                if not outgoing and src in self._muted:
                    return
                dst.sendall(data)
        except OSError:
            pass
