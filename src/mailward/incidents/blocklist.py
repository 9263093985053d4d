"""The active blocks as an in-memory snapshot the milter can consult on every connection.

Looking a client up must cost microseconds, not a database round trip, and
must keep working while the database is briefly away. So each host keeps a
snapshot and reloads it when older than ``incidents.refresh`` seconds (how
long another host's new block may take to reach this one); a block made on
this host is applied to the snapshot at once.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..addresses import canonical_address, client_ip
from .records import Block, SubjectKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    exact: dict[tuple[SubjectKind, str], Block]
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Block], ...]
    loaded_at: float

    @classmethod
    def of(cls, blocks: list[Block], now: float) -> Snapshot:
        exact: dict[tuple[SubjectKind, str], Block] = {}
        networks = []
        for block in blocks:
            if block.kind is SubjectKind.NETWORK:
                networks.append((ipaddress.ip_network(block.value, strict=False), block))
            else:
                exact[(block.kind, block.value)] = block
        return cls(exact, tuple(networks), now)


class BlockList:
    """Which active block, if any, applies to a client address or a sender."""

    def __init__(self, load: Callable[[], list[Block]], refresh: float, clock: Callable[[], float] = time.time):
        self._load = load
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = Snapshot({}, (), float("-inf"))

    def reload(self) -> None:
        """Read the active blocks now (after a change on this host, and when the snapshot is stale)."""
        now = self._clock()
        snapshot = Snapshot.of(self._load(), now)
        with self._lock:
            self._snapshot = snapshot

    def _current(self) -> Snapshot:
        snapshot = self._snapshot
        if self._clock() - snapshot.loaded_at >= self._refresh:
            try:
                self.reload()
            except Exception:  # keep the last good list: a database outage must not stop the mail
                log.exception(
                    "cannot reload the block list; using the copy from %.0f s ago", self._clock() - snapshot.loaded_at
                )
                with self._lock:  # and do not retry on every connection
                    self._snapshot = Snapshot(snapshot.exact, snapshot.networks, self._clock())
            snapshot = self._snapshot
        return snapshot

    def for_client(self, address: str) -> Block | None:
        """The block of this client address or a network containing it."""
        snapshot = self._current()
        ip = client_ip(address)
        if ip is None:
            return None
        found = snapshot.exact.get((SubjectKind.ADDRESS, str(ip)))
        if found is None:
            found = next((b for net, b in snapshot.networks if ip.version == net.version and ip in net), None)
        return self._live(found)

    def for_sender(self, account: str, mail_from: str) -> Block | None:
        """The block of the authenticated account, the envelope sender, or its domain (or a parent domain).

        The sender is compared in its canonical spelling: quotes, a source route or a trailing dot
        that Postfix reads past must not walk past a block."""
        snapshot = self._current()
        found = snapshot.exact.get((SubjectKind.ACCOUNT, account)) if account else None
        sender = canonical_address(mail_from)
        if found is None and sender:
            found = snapshot.exact.get((SubjectKind.SENDER, sender))
            domain = sender.rpartition("@")[2]
            while found is None and domain and "@" in sender:
                found = snapshot.exact.get((SubjectKind.DOMAIN, domain))
                domain = domain.partition(".")[2]
        return self._live(found)

    def counts(self) -> dict[str, int]:
        """Active blocks per kind (for the metrics)."""
        snapshot, now = self._current(), self._clock()
        out = {kind.value: 0 for kind in SubjectKind}
        for block in [*snapshot.exact.values(), *(b for _, b in snapshot.networks)]:
            if block.active(now):
                out[block.kind.value] += 1
        return out

    def _live(self, block: Block | None) -> Block | None:
        """A block may expire between reloads."""
        return block if block is not None and block.active(self._clock()) else None
