"""A small authoritative DNS server on loopback, built from dnspython's own parts.

Tests point Mailward's resolver at it, so every answer comes over real UDP and TCP
sockets on 127.0.0.1 and nothing falls through to the system resolver. Negative
answers carry the zone's SOA (RFC 2308) so resolvers can cache them; a log of the
questions received lets a test tell a cached answer from a fresh one. ``silent``
names get no reply at all (a zone that times out), ``delay`` stands for the round
trip to a real resolver, and :class:`BlackHole` is a resolver that never answers.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

HOST = "127.0.0.1"
# The root zone of a world with no names: every question gets an authoritative NXDOMAIN, fast.
EMPTY_ROOT = "$TTL 300\n@ IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n@ IN NS ns.invalid.\n"


def knows_no_names(port: int) -> dict[str, object]:
    """Reputation settings with every list on, asking the server on ``port`` (serving EMPTY_ROOT):
    every lookup is answered, none is listed, nothing leaves loopback."""
    return {
        "nameservers": ["127.0.0.1"],
        "port": port,
        "budget": 2.0,
        "query_timeout": 1.0,
        "dnsbl": ["bl.test"],
        "uribl": ["uribl.test"],
    }


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port (a resolver retries over TCP on TC)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise RuntimeError("no free port pair on loopback")


class _LoopbackPort:
    """A UDP and a TCP socket on one loopback port, served by a thread between enter and exit."""

    def _open(self, host: str, serve, name: str) -> None:
        self._stop = threading.Event()
        self._udp, self._tcp = _bind_pair(host)
        self.port = self._udp.getsockname()[1]
        self._thread = threading.Thread(target=serve, name=f"{name}-{self.port}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._udp.close()
        self._tcp.close()


class DnsServer(_LoopbackPort):
    """Serves the given zones (``origin -> zone text``) until stopped."""

    def __init__(self, zones: dict[str, str], silent: Iterable[str] = (), host: str = HOST, delay: float = 0.0):
        self.host = host
        self.delay = delay
        self.zones = [dns.zone.from_text(text, origin=origin, relativize=False) for origin, text in zones.items()]
        self.silent = [dns.name.from_text(n) for n in silent]
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._open(host, self._serve, "dns-server")

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many questions for ``name`` (and type) reached the server."""
        name = name.rstrip(".").lower() + "."
        with self._lock:
            return sum(1 for n, t in self.queries if n == name and (rdtype is None or t == rdtype))

    # --- serving -------------------------------------------------------------------
    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    if key.data == "udp":
                        self._serve_udp()
                    else:
                        conn, _ = self._tcp.accept()
                        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_udp(self) -> None:
        try:
            query, _, peer = dns.query.receive_udp(self._udp, expiration=time.time() + 1)
        except (dns.exception.DNSException, OSError, ValueError):
            return
        response = self._respond(query)
        if response is None:
            return
        limit = max(512, query.payload if query.edns >= 0 else 512)
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC | dns.flags.AA
            wire = response.to_wire()
        if self.delay:
            threading.Timer(self.delay, self._send, (wire, peer)).start()
        else:
            self._send(wire, peer)

    def _send(self, wire: bytes, peer) -> None:
        try:
            self._udp.sendto(wire, peer)
        except OSError:  # stopped meanwhile
            pass

    def _serve_tcp(self, conn: socket.socket) -> None:
        with conn:
            try:
                query, _ = dns.query.receive_tcp(conn, expiration=time.time() + 2)
            except (dns.exception.DNSException, OSError, EOFError, ValueError):
                return
            response = self._respond(query)
            if response is not None:
                dns.query.send_tcp(conn, response)

    def _respond(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        qname, rdtype = question.name, question.rdtype
        with self._lock:
            self.queries.append((qname.to_text().lower(), dns.rdatatype.to_text(rdtype)))
        if any(qname.is_subdomain(s) for s in self.silent):
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        name = qname
        for _ in range(8):  # follow CNAMEs inside our zones
            zone = self._zone_for(name)
            if zone is None:
                if name == qname:
                    response.set_rcode(dns.rcode.REFUSED)
                return response
            node = zone.get_node(name)
            if node is None:
                exists_below = any(n != name and n.is_subdomain(name) for n in zone.nodes)
                if not exists_below:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self._add_soa(response, zone)
                return response
            found = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if found is not None:
                response.answer.append(self._rrset(name, found))
                return response
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                self._add_soa(response, zone)  # NODATA
                return response
            response.answer.append(self._rrset(name, cname))
            name = cname[0].target
        return response

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        matching = [z for z in self.zones if name.is_subdomain(z.origin)]
        return max(matching, key=lambda z: len(z.origin), default=None)

    @staticmethod
    def _rrset(name: dns.name.Name, rdataset) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
        rrset.update(rdataset)
        return rrset

    def _add_soa(self, response: dns.message.Message, zone: dns.zone.Zone) -> None:
        soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
        response.authority.append(self._rrset(zone.origin, soa))


class BlackHole(_LoopbackPort):
    """A resolver address that swallows every query: UDP is read and dropped, TCP never answers."""

    def __init__(self, host: str = HOST):
        self.received = 0
        self._open(host, self._drain, "dns-blackhole")

    def _drain(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for _ in sel.select(0.05):
                    self._udp.recv(4096)
                    self.received += 1


def soa(origin: str, ttl: int = 300, negative_ttl: int = 300) -> str:
    """Zone-file lines every test zone starts with (SOA minimum = negative-answer TTL)."""
    return (
        f"$ORIGIN {origin}\n$TTL {ttl}\n"
        f"@ {ttl} IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {negative_ttl}\n"
        f"@ {ttl} IN NS ns.{origin}\nns {ttl} IN A 127.0.0.1\n"
    )
