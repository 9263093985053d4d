"""Parse a message once into a flat tree of content objects.

The stdlib parser recurses once per nesting level and is slow on thousands of
parts with the modern policy, so the raw bytes are pre-counted first, the
``compat32`` policy is used, and the parsed tree is walked iteratively. Every
limit that stops inspection becomes an ``unchecked`` finding: the policy, not
the parser, decides what an uninspectable message deserves.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.errors
import email.utils
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import Message
from typing import Iterator

from .config import LimitSettings
from .evidence import Category, Finding, Severity

_DELIMITER = re.compile(rb"^--[ -~]{1,70}\r?$", re.M)
_TEXT_TYPES = ("text/plain", "text/html")


@dataclass(frozen=True)
class ContentObject:
    """One inspectable object: a MIME leaf or, later, an archive member.

    ``path`` names it for analysts (``invoice.zip > docs/a.docm``); ``names``
    holds every name the message gives it (RFC 2231/2047 decoded, NFKC).
    """

    path: str
    data: bytes
    declared_type: str = "application/octet-stream"
    names: tuple[str, ...] = ()
    charset: str = ""
    depth: int = 0
    in_archive: bool = False
    disposition: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

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


def _unchecked(name: str, detail: str, location: str = "") -> Finding:
    return Finding(Category.UNCHECKED, name, Severity.HIGH, "parser", location, detail)


def parse_message(raw: bytes, limits: LimitSettings) -> ParsedMessage:
    """Parse ``raw`` into headers and content objects within ``limits``."""
    problems: list[Finding] = []
    if len(raw) > limits.max_message_size:
        problems.append(_unchecked("message-too-large", f"{len(raw)} bytes > {limits.max_message_size}"))
        return _unparsed(raw, problems, limits)
    delimiters = len(_DELIMITER.findall(raw))
    # Each part needs at least one delimiter line; twice the limit leaves room for closings.
    if delimiters > 2 * limits.max_parts + 2:
        problems.append(_unchecked("too-many-parts", f"{delimiters} boundary lines"))
        return _unparsed(raw, problems, limits)
    try:
        root = email.message_from_bytes(raw, policy=email.policy.compat32)
    except RecursionError:
        problems.append(_unchecked("nesting-too-deep", "MIME nesting exhausted the parser"))
        return _unparsed(raw, problems, limits)
    except Exception as exc:  # the stdlib parser is lenient; anything else is a crash to report
        problems.append(_unchecked("parser-crash", type(exc).__name__))
        return _unparsed(raw, problems, limits)

    for defect in root.defects:
        if type(defect).__name__ in ("StartBoundaryNotFoundDefect", "MultipartInvariantViolationDefect"):
            problems.append(Finding(Category.UNCHECKED, "malformed-mime", Severity.LOW, "parser", "",
                                    type(defect).__name__))

    objects: list[ContentObject] = []
    parts = 0
    deepest = 0
    stack: list[tuple[Message, str, int]] = [(root, "", 0)]
    while stack:
        part, path, depth = stack.pop()
        parts += 1
        deepest = max(deepest, depth)
        if parts > limits.max_parts:
            problems.append(_unchecked("too-many-parts", f"more than {limits.max_parts} MIME parts"))
            break
        if depth > limits.max_depth:
            problems.append(_unchecked("nesting-too-deep", f"depth {depth} > {limits.max_depth}", path))
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            children = [(child, f"{path}.{i}" if path else str(i), depth + 1) for i, child in enumerate(payload, 1)]
            stack.extend(reversed(children))
            continue
        if len(objects) >= limits.max_objects:
            problems.append(_unchecked("too-many-objects", f"more than {limits.max_objects} objects"))
            break
        objects.append(_leaf(part, path or "body", depth))

    return ParsedMessage(
        headers=tuple((k, decode_header_value(str(v))) for k, v in root.items()),
        objects=tuple(objects),
        problems=tuple(problems),
        size=len(raw),
        parts=parts,
        max_depth=deepest,
        raw_headers=raw.split(b"\n\n", 1)[0],
        raw=raw,
    )


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
    head, _, _ = raw.partition(b"\n\n")
    try:
        headers = tuple((k, decode_header_value(str(v)))
                        for k, v in email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32).items())
    except Exception:
        headers = ()
    data = raw[: limits.max_message_size]
    return ParsedMessage(headers=headers, objects=(ContentObject("raw message", data, "message/rfc822"),),
                         problems=tuple(problems), size=len(raw), raw_headers=head, raw=raw)
