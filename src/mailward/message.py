"""Parse a message once into a flat tree of content objects, archives and documents expanded.

The stdlib parser recurses once per nesting level and is slow on thousands of
parts with the modern policy, so the raw bytes are pre-counted first, the
``compat32`` policy is used, and the parsed tree is walked iteratively. Then
every leaf is sniffed and, if it is a container or a document, expanded through
:mod:`mailward.unpack` depth-first, charging every produced byte against the
message's budget. Every limit that stops inspection becomes an ``unchecked``
finding: the policy, not the parser, decides what an uninspectable message deserves.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.errors
import email.utils
import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass, field, replace
from email.message import Message
from functools import cached_property
from typing import Iterator

from .config import LimitSettings
from .evidence import Category, Finding, Severity
from .unpack import Allowance, Incomplete, Kind, MemberState, Observation, Stop, Unpacker
from .unpack.passwords import password_candidates
from .unpack.uuencode import has_uuencoded

_DELIMITER = re.compile(rb"^--[ -~]{1,70}\r?$", re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_block(raw: bytes) -> bytes:
    """The bytes before the first empty line, whether lines end in LF or CRLF."""
    end = _HEADER_END.search(raw)
    return raw[: end.start()] if end else raw
_TEXT_TYPES = ("text/plain", "text/html")
PATH_SEPARATOR = " > "
# What each early stop costs in weight: lost members weigh more than a document analysis that failed.
_STOP_SEVERITY = {Stop.CORRUPT: Severity.MEDIUM, Stop.UNSUPPORTED: Severity.MEDIUM}


@dataclass(frozen=True)
class ContentObject:
    """One inspectable object: a MIME leaf, an archive member, or what a document carries.

    ``path`` names it for analysts (``invoice.zip > docs/a.docm > word/vbaProject.bin``);
    ``names`` holds every name the message gives it (RFC 2231/2047 decoded, NFKC).
    ``sniffed_type``/``kind`` come from the content, ``declared_type`` from the
    message or the container. ``state`` says whether ``data`` is whole.
    """

    path: str
    data: bytes
    declared_type: str = "application/octet-stream"
    names: tuple[str, ...] = ()
    charset: str = ""
    depth: int = 0
    in_archive: bool = False
    disposition: str = ""
    sniffed_type: str = ""
    kind: Kind = Kind.OTHER
    parent: str = ""                   # path of the container it came out of ("" for MIME leaves)
    container: str = ""                # kind of that container ("zip", "pdf", "ole"...)
    state: MemberState = MemberState.COMPLETE
    observations: tuple[Observation, ...] = ()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()

    @cached_property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @property
    def has_content(self) -> bool:
        """False for members known only by name (encrypted, or left unread by a limit)."""
        return self.state in (MemberState.COMPLETE, MemberState.TRUNCATED)

    @property
    def is_text(self) -> bool:
        return self.declared_type in _TEXT_TYPES and not self.in_archive and self.disposition != "attachment"

    def text(self) -> str:
        """The object decoded as text with its declared charset (Latin-1 when unknown)."""
        for charset in (self.charset, "utf-8", "latin-1"):
            if not charset:
                continue
            try:
                return self.data.decode(charset)
            except (LookupError, UnicodeDecodeError):
                continue
        return self.data.decode("latin-1")


@dataclass(frozen=True)
class ParsedMessage:
    headers: tuple[tuple[str, str], ...]
    objects: tuple[ContentObject, ...]
    problems: tuple[Finding, ...] = ()
    size: int = 0
    parts: int = 0
    max_depth: int = 0
    raw_headers: bytes = field(default=b"", repr=False)
    raw: bytes = field(default=b"", repr=False)     # exact bytes, for checks that hash them (DKIM)

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def subject(self) -> str:
        return self.header("subject")

    def text_objects(self) -> Iterator[ContentObject]:
        return (o for o in self.objects if o.is_text)


def decode_header_value(value: str) -> str:
    """RFC 2047-decode a header value; undecodable words are kept as they are."""
    if "=?" not in value:
        return " ".join(value.split()) if "\n" in value else value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        return value


def normalise_name(name: str) -> str:
    """NFKC, trailing dots and spaces removed: how Windows will see the name."""
    return unicodedata.normalize("NFKC", name).rstrip(". ")


def _unchecked(name: str, detail: str, location: str = "", severity: Severity = Severity.HIGH) -> Finding:
    return Finding(Category.UNCHECKED, name, severity, "parser", location, detail)


def parse_message(raw: bytes, limits: LimitSettings, unpacker: Unpacker | None = None) -> ParsedMessage:
    """Parse ``raw`` into headers and content objects within ``limits``.

    Pass one long-lived ``unpacker`` per worker: it owns the libmagic handle and
    the parser sandbox. Without one, a temporary unpacker is made and closed.
    """
    problems: list[Finding] = []
    if len(raw) > limits.max_message_size:
        problems.append(_unchecked("message-too-large", f"{len(raw)} bytes > {limits.max_message_size}"))
        return _unparsed(raw, problems, limits)
    root, refused = _parse_mime(raw, limits)
    if root is None:
        return _unparsed(raw, refused, limits)
    walk = _walk(root, limits, "", 0)
    own = unpacker is None
    unpacker = unpacker or Unpacker(limits)
    try:
        expansion = _Expansion(limits, unpacker, len(raw), _PasswordSource(root, walk.leaves, limits))
        expansion.run(walk.leaves)
    finally:
        if own:
            unpacker.close()
    return ParsedMessage(
        headers=tuple((k, decode_header_value(str(v))) for k, v in root.items()),
        objects=tuple(expansion.objects),
        problems=tuple(walk.problems + expansion.problems),
        size=len(raw),
        parts=walk.parts,
        max_depth=max([walk.deepest, *(o.depth for o in expansion.objects)]),
        raw_headers=header_block(raw),
        raw=raw,
    )


def _parse_mime(raw: bytes, limits: LimitSettings) -> tuple[Message | None, list[Finding]]:
    """The stdlib parse, refused up front when boundary lines promise too many parts."""
    delimiters = len(_DELIMITER.findall(raw))
    # Each part needs at least one delimiter line; twice the limit leaves room for closings.
    if delimiters > 2 * limits.max_parts + 2:
        return None, [_unchecked("too-many-parts", f"{delimiters} boundary lines")]
    try:
        root = email.message_from_bytes(raw, policy=email.policy.compat32)
    except RecursionError:
        return None, [_unchecked("nesting-too-deep", "MIME nesting exhausted the parser")]
    except Exception as exc:  # the stdlib parser is lenient; anything else is a crash to report
        return None, [_unchecked("parser-crash", type(exc).__name__)]
    return root, []


@dataclass(frozen=True)
class _Walk:
    leaves: list[ContentObject]
    problems: list[Finding]
    parts: int
    deepest: int


def _walk(root: Message, limits: LimitSettings, prefix: str, base_depth: int) -> _Walk:
    """The leaves of a parsed MIME tree, iteratively, within the part and depth limits."""
    problems: list[Finding] = []
    for defect in root.defects:
        if type(defect).__name__ in ("StartBoundaryNotFoundDefect", "MultipartInvariantViolationDefect"):
            problems.append(_unchecked("malformed-mime", type(defect).__name__, prefix, Severity.LOW))
    leaves: list[ContentObject] = []
    parts = 0
    deepest = base_depth
    stack: list[tuple[Message, str, int]] = [(root, "", base_depth)]
    while stack:
        part, path, depth = stack.pop()
        parts += 1
        deepest = max(deepest, depth)
        if parts > limits.max_parts:
            problems.append(_unchecked("too-many-parts", f"more than {limits.max_parts} MIME parts", prefix))
            break
        if depth > limits.max_depth:
            problems.append(_unchecked("nesting-too-deep", f"depth {depth} > {limits.max_depth}",
                                       _join(prefix, f"part {path}")))
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            children = [(child, f"{path}.{i}" if path else str(i), depth + 1) for i, child in enumerate(payload, 1)]
            stack.extend(reversed(children))
            continue
        leaf = _leaf(part, path or "body", depth)
        leaves.append(replace(leaf, path=_join(prefix, leaf.path)) if prefix else leaf)
    return _Walk(leaves, problems, parts, deepest)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}{PATH_SEPARATOR}{name}" if prefix else name


class _Expansion:
    """Depth-first expansion of one message's leaves within its byte, object, depth and time limits."""

    def __init__(self, limits: LimitSettings, unpacker: Unpacker, message_size: int, passwords: "_PasswordSource"):
        self.limits = limits
        self.unpacker = unpacker
        self.passwords = passwords
        self.budget = limits.unpack_budget(message_size)
        self.deadline = time.monotonic() + limits.inspect_deadline
        self.objects: list[ContentObject] = []
        self.problems: list[Finding] = []
        self.late = False

    def run(self, leaves: list[ContentObject]) -> None:
        self.budget -= sum(len(o.data) for o in leaves)      # decoding MIME is unpacking too
        stack = list(reversed(leaves))
        while stack:
            obj = stack.pop()
            if len(self.objects) >= self.limits.max_objects:
                self.problems.append(_unchecked("too-many-objects", f"more than {self.limits.max_objects} objects",
                                                obj.path))
                break
            if obj.has_content:
                trusted = obj.is_text or (obj.container == Kind.ZIP.value and obj.declared_type == "text/xml")
                sniffed = self.unpacker.sniff(obj.data, obj.declared_type if trusted else "")
                obj = replace(obj, sniffed_type=sniffed.mime, kind=sniffed.kind)
            self.objects.append(obj)
            stack.extend(reversed(self._children(obj, pending=len(stack))))

    def _children(self, obj: ContentObject, pending: int) -> list[ContentObject]:
        kind = obj.kind
        if not obj.has_content or not (Unpacker.handles(kind) or kind in (Kind.EMAIL, Kind.OTHER_ARCHIVE,
                                                                             Kind.DISK_IMAGE)):
            return []
        if kind is Kind.TEXT and not has_uuencoded(obj.data):
            return []
        if kind in (Kind.OTHER_ARCHIVE, Kind.DISK_IMAGE):
            self.problems.append(_unchecked(Stop.UNSUPPORTED.value, f"cannot open {obj.sniffed_type}", obj.path,
                                            Severity.MEDIUM))
            return []
        if obj.depth >= self.limits.max_depth:
            self.problems.append(_unchecked("nesting-too-deep", f"depth {obj.depth + 1} > {self.limits.max_depth}",
                                            obj.path))
            return []
        if time.monotonic() + self.limits.parser_timeout > self.deadline:   # a parser call may take its full limit
            if not self.late:
                self.late = True
                self.problems.append(_unchecked("inspect-deadline", f"more than {self.limits.inspect_deadline:g}s",
                                                obj.path))
            return []
        if kind is Kind.EMAIL:
            return self._email(obj)
        allowance = Allowance(bytes=max(self.budget, 0),
                              members=max(self.limits.max_objects - len(self.objects) - pending, 0),
                              max_ratio=self.limits.max_ratio, ratio_floor=self.limits.ratio_floor,
                              passwords=self.passwords.candidates() if kind is not Kind.TEXT else (),
                              seconds=self.limits.parser_timeout)
        result = self.unpacker.unpack(kind, obj.data, obj.names[0] if obj.names else obj.path, allowance)
        self.budget -= result.produced
        self.problems.extend(_stopped(i, obj.path) for i in result.incomplete)
        if result.observations:
            self.objects[-1] = replace(obj, observations=result.observations)
        return [ContentObject(path=_join(obj.path, m.name), data=m.data, declared_type=m.declared_type,
                              names=tuple(filter(None, [normalise_name(m.name)])), depth=obj.depth + 1,
                              in_archive=True, parent=obj.path, container=kind.value, state=m.state)
                for m in result.members]

    def _email(self, obj: ContentObject) -> list[ContentObject]:
        """A message inside an archive or an undecoded message/rfc822 part: its own MIME leaves."""
        root, refused = _parse_mime(obj.data, self.limits)
        self.problems.extend(replace(p, location=obj.path) for p in refused)
        if root is None:
            return []
        walk = _walk(root, self.limits, obj.path, obj.depth)
        self.problems.extend(walk.problems)
        self.budget -= sum(len(o.data) for o in walk.leaves)
        return [replace(o, in_archive=True, parent=obj.path, container=Kind.EMAIL.value) for o in walk.leaves]


class _PasswordSource:
    """Password candidates from the subject and text parts, looked for only once a container needs them."""

    def __init__(self, root: Message, leaves: list[ContentObject], limits: LimitSettings):
        self._root, self._leaves, self._limit = root, leaves, limits.password_candidates
        self._found: tuple[str, ...] | None = None

    def candidates(self) -> tuple[str, ...]:
        if self._found is None:
            texts = [decode_header_value(str(self._root.get("subject", "")))]
            texts += [o.text() for o in self._leaves if o.is_text]
            self._found = password_candidates(texts, self._limit)
        return self._found


def _stopped(incomplete: Incomplete, location: str) -> Finding:
    return Finding(Category.UNCHECKED, incomplete.stop.value, _STOP_SEVERITY.get(incomplete.stop, Severity.HIGH),
                   "unpack", location, incomplete.detail)


def _leaf(part: Message, path: str, depth: int) -> ContentObject:
    names = []
    for raw_name in (part.get_filename(), part.get_param("name", header="content-type")):
        if isinstance(raw_name, tuple):        # RFC 2231 without a charset the stdlib did not collapse
            raw_name = email.utils.collapse_rfc2231_value(raw_name)
        if raw_name:
            name = normalise_name(decode_header_value(str(raw_name)))
            if name and name not in names:
                names.append(name)
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken encoding still leaves the raw text to scan
        data = None
    if data is None:
        payload = part.get_payload()
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    label = names[0] if names else f"part {path}"
    return ContentObject(
        path=label,
        data=data,
        declared_type=part.get_content_type(),
        names=tuple(names),
        charset=str(part.get_content_charset() or ""),
        depth=depth,
        disposition=(part.get_content_disposition() or ""),
    )


def _unparsed(raw: bytes, problems: list[Finding], limits: LimitSettings) -> ParsedMessage:
    """A message that was not parsed is still scanned whole, as raw bytes."""
    head = header_block(raw)
    try:
        headers = tuple((k, decode_header_value(str(v)))
                        for k, v in email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32).items())
    except Exception:
        headers = ()
    data = raw[: limits.max_message_size]
    return ParsedMessage(headers=headers, objects=(ContentObject("raw message", data, "message/rfc822"),),
                         problems=tuple(problems), size=len(raw), raw_headers=head, raw=raw)
