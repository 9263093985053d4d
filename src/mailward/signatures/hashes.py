"""SHA-256 / SHA-1 / MD5 deny and allow lists in the formats public IOC feeds use.

Accepted lines (blank lines and ``#`` comments ignored):

* ``hash;description`` (abuse.ch style), ``hash,description``, ``hash  description``
  (sha256sum style) or a bare ``hash``, each also as ``sha256:hash`` (``md5:``, ``sha1:``);
* ClamAV ``.hdb``/``.hsb`` (also ``.hdu``/``.hsu``): ``hash:size:name[:flevel]``,
  size ``*`` meaning any.

A UTF-8 byte order mark is skipped. A file with lines but not one usable entry (a
feed in another format, UTF-16) is refused like a missing one: it would protect
nothing while looking configured.

Digests are kept in one sorted byte string per algorithm, not a dict of
objects: a feed of a million SHA-256 hashes costs ~44 MB instead of ~150 MB.
"""

from __future__ import annotations

import logging
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..envelope import Envelope
from ..errors import ArtifactError
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ContentObject, ParsedMessage
from ..trust import TrustedOwners
from ..unpack import MemberState

log = logging.getLogger(__name__)

_ALGORITHMS = {16: "md5", 20: "sha1", 32: "sha256"}
_CLAMAV_SUFFIXES = (".hdb", ".hsb", ".hdu", ".hsu")
_GENERIC = re.compile(
    r"^(?:(md5|sha1|sha256):)?([0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64})(?:\s*[;,\s]\s*(.*))?$", re.IGNORECASE
)
ANY_SIZE = -1
_MAX_SIZE = 2**63 - 1  # sizes are kept as signed 64-bit integers (array "q")


class _Table:
    """Sorted fixed-width digests with a description index and an optional size each."""

    def __init__(self, width: int, rows: list[tuple[bytes, int, int]]):
        rows.sort()
        self.width = width
        self.digests = b"".join(r[0] for r in rows)
        self.descriptions = array("I", (r[1] for r in rows))
        self.sizes = array("q", (r[2] for r in rows))

    def __len__(self) -> int:
        return len(self.descriptions)

    def find(self, digest: bytes) -> list[int]:
        """Indexes of every row with ``digest`` (ClamAV lists may repeat a hash with sizes)."""
        lo, hi, w = 0, len(self), self.width
        while lo < hi:
            mid = (lo + hi) // 2
            if self.digests[mid * w : (mid + 1) * w] < digest:
                lo = mid + 1
            else:
                hi = mid
        out = []
        while lo < len(self) and self.digests[lo * w : (lo + 1) * w] == digest:
            out.append(lo)
            lo += 1
        return out


@dataclass(frozen=True)
class HashMatch:
    algorithm: str
    digest: str
    description: str


class HashList:
    def __init__(self, tables: dict[str, _Table], descriptions: list[str]):
        self._tables = tables
        self._descriptions = descriptions

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    @classmethod
    def load(cls, paths: list[str] | tuple[str, ...], owners: TrustedOwners | None = None) -> HashList:
        """The lists at ``paths``; each must be trusted by ``owners`` (default: root and this user),
        since an entry in an allow list silences every signature for that object."""
        owners = owners or TrustedOwners.of()
        rows: dict[int, list[tuple[bytes, int, int]]] = {16: [], 20: [], 32: []}
        descriptions: list[str] = []
        index: dict[str, int] = {}
        for name in paths:
            path = Path(name)
            if path.exists():
                owners.require(path)
            try:
                text = path.read_text("utf-8-sig", errors="replace")
            except OSError as exc:
                raise ArtifactError(f"hash list {path}: {exc.strerror}") from None
            clamav = path.suffix.lower() in _CLAMAV_SUFFIXES
            bad = good = 0
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                entry = _parse_clamav(line) if clamav else _parse_generic(line)
                if entry is None:
                    bad += 1
                    continue
                good += 1
                digest, size, description = entry
                description = description or path.name
                if description not in index:
                    index[description] = len(descriptions)
                    descriptions.append(description)
                rows[len(digest)].append((digest, index[description], size))
            if bad and not good:
                raise ArtifactError(
                    f"hash list {path}: no usable entry in its {bad} line(s)"
                    " (UTF-8 text: hash;description, sha256sum lines, ClamAV .hdb/.hsb)"
                )
            if bad:
                log.warning("hash list %s: %d line(s) not understood, ignored", path, bad)
        return cls({_ALGORITHMS[w]: _Table(w, r) for w, r in rows.items() if r}, descriptions)

    def match(self, obj: ContentObject) -> HashMatch | None:
        for algorithm, table in self._tables.items():
            digest = getattr(obj, algorithm)
            for i in table.find(bytes.fromhex(digest)):
                if table.sizes[i] in (ANY_SIZE, len(obj.data)):
                    return HashMatch(algorithm, digest, self._descriptions[table.descriptions[i]])
        return None

    def exempt(self, objects: tuple[ContentObject, ...]) -> frozenset[str]:
        """Paths of allowed objects and of everything unpacked from them."""
        if not self._tables:
            return frozenset()
        out: set[str] = set()
        for obj in objects:
            if (obj.parent and obj.parent in out) or (obj.state is MemberState.COMPLETE and self.match(obj)):
                out.add(obj.path)
        return frozenset(out)


def _parse_generic(line: str) -> tuple[bytes, int, str] | None:
    m = _GENERIC.match(line)
    if m is None:
        return None
    named, digest = m.group(1), bytes.fromhex(m.group(2))
    if named is not None and named.lower() != _ALGORITHMS[len(digest)]:  # "md5:" before 64 digits
        return None
    return digest, ANY_SIZE, (m.group(3) or "").strip()


def _parse_clamav(line: str) -> tuple[bytes, int, str] | None:
    fields = [f.strip() for f in line.split(":")]  # feeds put tabs or spaces around the colons
    if len(fields) < 3 or len(fields[0]) not in (32, 40, 64):
        return None
    try:
        digest = bytes.fromhex(fields[0])
        size = ANY_SIZE if fields[1] == "*" else int(fields[1])
    except ValueError:
        return None
    if fields[1] != "*" and not 0 <= size <= _MAX_SIZE:  # "-1" is no wildcard; larger ones overflow the table
        return None
    return digest, size, fields[2]


@dataclass(frozen=True)
class HashDetector:
    deny: HashList
    allow: HashList
    name: str = "hashes"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        if not len(self.deny):
            return Evidence()
        exempt = self.allow.exempt(message.objects)
        findings = []
        for obj in message.objects:
            if obj.state is not MemberState.COMPLETE or obj.path in exempt:
                continue
            hit = self.deny.match(obj)
            if hit is not None:
                findings.append(
                    Finding(
                        Category.MALWARE,
                        f"hash:{hit.description}"[:120],
                        Severity.HIGH,
                        self.name,
                        obj.path,
                        f"{hit.algorithm} {hit.digest}",
                    )
                )
        return Evidence(findings=tuple(findings))
