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

import binascii
import codecs
import email
import email.errors
import email.header
import email.policy
import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import Message
from functools import cached_property

from .config import LimitSettings
from .evidence import Category, Finding, Severity
from .mimeparse import POLICY, header_end, stdlib_parse
from .unpack import Allowance, Incomplete, Kind, MemberState, Observation, Stop, Unpacker
from .unpack.carve import has_embedded_archive
from .unpack.passwords import password_candidates
from .unpack.uuencode import has_uuencoded

_DELIMITER = re.compile(rb"^--[ -~]{1,70}\r?$", re.M)


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Header block and body, split at the first empty line whether lines end in LF or CRLF.

    The one rule for where the header block ends (parser, release marks,
    quarantine listing); with no empty line it is all header and no body.
    """
    ends = header_end(raw)
    return (raw[: ends[0]], raw[ends[1] :]) if ends else (raw, b"")


def header_block(raw: bytes) -> bytes:
    """The bytes before the first empty line, whether lines end in LF or CRLF."""
    ends = header_end(raw)
    return raw[: ends[0]] if ends else raw


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
    parent: str = ""  # path of the container it came out of ("" for MIME leaves)
    container: str = ""  # kind of that container ("zip", "pdf", "ole"...)
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
        """The object decoded as text with its declared charset (UTF-8, then Latin-1, when that fails)."""
        return decode_text(self.data, self.charset)[0]


@dataclass(frozen=True)
class ParsedMessage:
    headers: tuple[tuple[str, str], ...]
    objects: tuple[ContentObject, ...]
    problems: tuple[Finding, ...] = ()
    size: int = 0
    parts: int = 0
    max_depth: int = 0
    raw_headers: bytes = field(default=b"", repr=False)
    raw: bytes = field(default=b"", repr=False)  # exact bytes, for checks that hash them (DKIM)

    @cached_property
    def _first_by_name(self) -> dict[str, str]:
        """The first value of each lower-cased field name: the tokenizer asks for a dozen fields."""
        return {key.lower(): value for key, value in reversed(self.headers)}

    def header(self, name: str, default: str = "") -> str:
        return self._first_by_name.get(name.lower(), default)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header_names(self) -> frozenset[str]:
        """The lower-cased names of the fields present."""
        return frozenset(self._first_by_name)

    @property
    def subject(self) -> str:
        return self.header("subject")

    def text_objects(self) -> Iterator[ContentObject]:
        return (o for o in self.objects if o.is_text)


# Codecs Python knows that no mail charset means: they fail on 8-bit bytes or rewrite ASCII text.
_NOT_MAIL_CHARSETS = frozenset(
    {"idna", "punycode", "undefined", "unicode_escape", "raw_unicode_escape", "mbcs", "oem", "palmos"}
)


def decode_text(data: bytes, charset: str) -> tuple[str, bool]:
    """``data`` as text, and whether ``charset`` (empty: none declared) decoded it cleanly.

    Never raises: a sender picks the charset, and an unknown, non-text or lying one
    must not stop the scan. The fallback is UTF-8, then Latin-1 (which decodes any
    bytes), so every byte still reaches the detectors.
    """
    declared = _mail_codec(charset)
    for codec in (declared, "utf-8"):
        if codec:
            try:
                return data.decode(codec), codec == declared or not charset
            except (UnicodeError, ValueError, TypeError, LookupError):
                continue
    return data.decode("latin-1"), not charset  # undeclared 8-bit text is old mail, not an error


def _mail_codec(charset: str) -> str:
    """The Python codec for a mail charset name, or "" when there is none fit for mail text."""
    if not charset or not charset.isascii():  # codecs.lookup would read "utf\xe98" as utf-8
        return ""
    try:
        name = codecs.lookup(charset.strip()).name
    except (LookupError, ValueError, TypeError, UnicodeError):
        return ""
    return "" if name.replace("-", "_") in _NOT_MAIL_CHARSETS else name


def decode_header_value(value: str) -> str:
    """RFC 2047-decode a header value; undecodable words are kept as they are."""
    return decode_header(value)[0]


def decode_header(value: str) -> tuple[str, bool]:
    """A header value RFC 2047-decoded, and whether every encoded word decoded cleanly.

    Never raises: a word in an unknown or broken charset becomes UTF-8 or Latin-1
    text (see :func:`decode_text`), a value the stdlib cannot split is kept as it is.
    """
    if "=?" not in value:
        return (" ".join(value.split()) if "\n" in value else value), True
    try:
        words = email.header.decode_header(value)
    except Exception:  # HeaderParseError and whatever else a hostile value provokes
        return value, False
    try:
        return str(email.header.make_header(words)), True
    except Exception:  # CharsetError, LookupError, UnicodeError: decode word by word instead
        pass
    texts = []
    for chunk, charset in words:
        if isinstance(chunk, str):
            texts.append(chunk)
        else:
            texts.append(decode_text(chunk, "" if charset in (None, "unknown-8bit") else str(charset))[0])
    return " ".join(t.strip() for t in texts if t.strip()), False


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
    try:
        walk = _walk(root, limits, "", 0)
    except Exception as exc:  # a stdlib corner the guards above missed: scan the raw bytes whole
        return _unparsed(
            raw, [_unchecked("parse-error", f"MIME walk failed: {type(exc).__name__}", "", Severity.MEDIUM)], limits
        )
    own = unpacker is None
    unpacker = unpacker or Unpacker(limits)
    try:
        expansion = _Expansion(limits, unpacker, len(raw), _PasswordSource(root, walk.leaves, limits))
        expansion.run(walk.leaves)
    except Exception as exc:  # a bug on hostile bytes: keep what was expanded, and every MIME leaf
        expansion.problems.append(
            _unchecked("parse-error", f"expanding failed: {type(exc).__name__}", "", Severity.MEDIUM)
        )
        seen = {o.path for o in expansion.objects}
        expansion.objects.extend(o for o in walk.leaves if o.path not in seen)
    finally:
        if own:
            unpacker.close()
    headers, header_problems = _decoded_headers(root)
    return ParsedMessage(
        headers=headers,
        objects=tuple(expansion.objects),
        problems=tuple(header_problems + walk.problems + expansion.problems),
        size=len(raw),
        parts=walk.parts,
        max_depth=max([walk.deepest, *(o.depth for o in expansion.objects)]),
        raw_headers=header_block(raw),
        raw=raw,
    )


def _decoded_headers(root: Message) -> tuple[tuple[tuple[str, str], ...], list[Finding]]:
    """Every header field decoded, and a ``parse-error`` for each that needed a fallback."""
    headers, problems = [], []
    for key, value in root.raw_items():
        if not isinstance(value, str) or not value.isascii():  # the only values compat32's items() changes
            value = root.policy.header_fetch_parse(key, value)
        try:
            text, clean = decode_header(str(value))
        except Exception:  # str() of a Header object the stdlib cannot render
            text, clean = "", False
        if not clean:
            problems.append(
                parse_error(f"header {key}", "undecodable encoded word or charset; kept with replacement characters")
            )
        headers.append((key, text))
    return tuple(headers), problems


def parse_error(location: str, detail: str) -> Finding:
    """A decode step fell back (replacement characters, raw bytes). INFO: every byte still reached
    the detectors, so it decides nothing, but an analyst sees why text looks odd."""
    return Finding(Category.UNCHECKED, "parse-error", Severity.INFO, "parser", location, detail)


def _parse_mime(raw: bytes, limits: LimitSettings) -> tuple[Message | None, list[Finding]]:
    """The stdlib parse, refused up front when boundary lines promise too many parts."""
    allowed = 2 * limits.max_parts + 2  # each part needs a delimiter line; twice the limit leaves room for closings
    # Every delimiter line starts the message or follows an LF: counting those is a bound, in one C scan.
    if raw.count(b"\n--") + raw.startswith(b"--") > allowed:
        delimiters = len(_DELIMITER.findall(raw))
        if delimiters > allowed:
            return None, [_unchecked("too-many-parts", f"{delimiters} boundary lines")]
    try:
        root = stdlib_parse(raw)
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
            problems.append(
                _unchecked("nesting-too-deep", f"depth {depth} > {limits.max_depth}", _join(prefix, f"part {path}"))
            )
            continue
        # Only a multipart's payload is read here: get_payload() on a leaf decodes 8-bit text with
        # its declared charset, which raises for charsets such as idna.
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list) and not _encoded_message(part, payload):
            children = [(child, f"{path}.{i}" if path else str(i), depth + 1) for i, child in enumerate(payload, 1)]
            stack.extend(reversed(children))
            continue
        encoding = transfer_encoding(part)  # read once: the leaf's decoding and the past-padding check share it
        leaf, trouble = _leaf(part, path or "body", depth, encoding)
        leaf = replace(leaf, path=_join(prefix, leaf.path)) if prefix else leaf
        leaves.append(leaf)
        problems.extend(parse_error(leaf.path, detail) for detail in trouble)
        if (whole := past_padding(part, encoding)) is not None:  # not text: the spam model reads the part as decoded
            leaves.append(ContentObject(_join(leaf.path, "base64 past its padding"), whole, depth=depth))
    return _Walk(leaves, problems, parts, deepest)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}{PATH_SEPARATOR}{name}" if prefix else name


class _Expansion:
    """Depth-first expansion of one message's leaves within its byte, object, depth and time limits."""

    def __init__(self, limits: LimitSettings, unpacker: Unpacker, message_size: int, passwords: _PasswordSource):
        self.limits = limits
        self.unpacker = unpacker
        self.passwords = passwords
        self.budget = limits.unpack_budget(message_size)
        self.password_trials = limits.password_trials  # wrong passwords left for the whole message
        self.password_time = limits.password_time  # and the seconds left for them
        self.deadline = time.monotonic() + limits.inspect_deadline
        self.objects: list[ContentObject] = []
        self.problems: list[Finding] = []
        self.late = False

    def run(self, leaves: list[ContentObject]) -> None:
        self.budget -= sum(len(o.data) for o in leaves)  # decoding MIME is unpacking too
        stack = list(reversed(leaves))
        while stack:
            obj = stack.pop()
            if len(self.objects) >= self.limits.max_objects:
                self.problems.append(
                    _unchecked("too-many-objects", f"more than {self.limits.max_objects} objects", obj.path)
                )
                break
            if obj.has_content and self._past_deadline(obj.path, time.monotonic()):
                self.objects.append(obj)  # names and bytes still reach the checks; its type is unknown
                continue
            if obj.has_content:
                trusted = obj.is_text or (obj.container == Kind.ZIP.value and obj.declared_type == "text/xml")
                sniffed = self.unpacker.sniff(obj.data, obj.declared_type if trusted else "")
                obj = replace(obj, sniffed_type=sniffed.mime, kind=sniffed.kind)
            self.objects.append(obj)
            stack.extend(reversed(self._children(obj, pending=len(stack))))

    def _children(self, obj: ContentObject, pending: int) -> list[ContentObject]:
        handlers = _handlers(obj)
        if not handlers:
            return []
        kind = obj.kind
        if kind in (Kind.OTHER_ARCHIVE, Kind.DISK_IMAGE):
            self.problems.append(
                _unchecked(Stop.UNSUPPORTED.value, f"cannot open {obj.sniffed_type}", obj.path, Severity.MEDIUM)
            )
            handlers.remove(kind)
            if not handlers:
                return []
        if obj.depth >= self.limits.max_depth:
            self.problems.append(
                _unchecked("nesting-too-deep", f"depth {obj.depth + 1} > {self.limits.max_depth}", obj.path)
            )
            return []
        children: list[ContentObject] = []
        for handler in handlers:
            # a parser call may take its whole time limit: none starts that close to the deadline
            if self._past_deadline(obj.path, time.monotonic() + self.limits.parser_timeout):
                break
            try:
                children += self._expand(obj, handler, pending + len(children))
            except Exception as exc:  # a handler bug on hostile bytes: this object unchecked, the rest goes on
                self.problems.append(
                    _unchecked("parse-error", f"expanding failed: {type(exc).__name__}", obj.path, Severity.MEDIUM)
                )
        return children

    def _past_deadline(self, path: str, when: float) -> bool:
        """Whether ``when`` is past the inspection deadline; the first time, an ``inspect-deadline`` finding."""
        if when < self.deadline:
            return False
        if not self.late:
            self.late = True
            self.problems.append(_unchecked("inspect-deadline", f"more than {self.limits.inspect_deadline:g}s", path))
        return True

    def _expand(self, obj: ContentObject, kind: Kind, pending: int) -> list[ContentObject]:
        if kind is Kind.EMAIL:
            return self._email(obj)
        allowance = Allowance(
            bytes=max(self.budget, 0),
            members=max(self.limits.max_objects - len(self.objects) - pending, 0),
            max_ratio=self.limits.max_ratio,
            ratio_floor=self.limits.ratio_floor,
            passwords=self.passwords.candidates() if kind not in (Kind.TEXT, Kind.HTML) else (),
            seconds=self.limits.parser_timeout,
            # One container may spend a few wrong tries per candidate (several passwords), not the message's all.
            password_trials=max(min(self.password_trials, 4 * self.limits.password_candidates), 0),
            password_seconds=max(self.password_time, 0.0),
        )
        result = self.unpacker.unpack(kind, obj.data, obj.names[0] if obj.names else obj.path, allowance)
        self.budget -= result.produced
        self.password_trials -= result.password_trials
        self.password_time -= result.password_seconds
        self.problems.extend(_stopped(i, obj.path) for i in result.incomplete)
        if result.observations:
            self.objects[-1] = replace(obj, observations=self.objects[-1].observations + result.observations)
        return [
            ContentObject(
                path=_join(obj.path, m.name),
                data=m.data,
                declared_type=m.declared_type,
                names=tuple(filter(None, [normalise_name(m.name)])),
                depth=obj.depth + 1,
                in_archive=True,
                parent=obj.path,
                container=kind.value,
                state=m.state,
            )
            for m in result.members
        ]

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


def _handlers(obj: ContentObject) -> list[Kind]:
    """The handlers that read ``obj``: its kind's own, the text decoder, the archive carver.

    Mail clients show a uuencoded block in a text body as an attachment, whatever else the
    body looks like: a declared text part is decoded even when its first bytes (``{\\rtf1``,
    a NUL) make it sniff as something else, and so is any object no other handler reads.
    Archive tools open a zip after a GIF header or text lines, and a 7z or RAR after any
    prefix: objects no other handler reads are searched for them, but for a message's unnamed
    text (a client shows it; only a file it saves is opened by an archive tool).
    """
    if not obj.has_content:
        return []
    kind = obj.kind
    own = Unpacker.handles(kind) or kind in (Kind.EMAIL, Kind.OTHER_ARCHIVE, Kind.DISK_IMAGE)
    handlers: list[Kind] = [kind] if own and kind not in _ANY_BYTES else []
    unread = not handlers  # no container or document parser: text, markup, images, unknown data
    if (unread or obj.declared_type.startswith("text/")) and has_uuencoded(obj.data):
        handlers.append(Kind.TEXT)
    body_text = obj.declared_type.startswith("text/") and not obj.names  # shown, never saved and opened
    if unread and not body_text and has_embedded_archive(obj.data):
        handlers.append(Kind.OTHER)
    if kind is Kind.HTML and b"base64," in obj.data:
        handlers.append(Kind.HTML)
    return handlers


# Handlers registered under these kinds look for something in any bytes, rather than parse a format.
_ANY_BYTES = (Kind.TEXT, Kind.OTHER, Kind.HTML)


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
    return Finding(
        Category.UNCHECKED,
        incomplete.stop.value,
        _STOP_SEVERITY.get(incomplete.stop, Severity.HIGH),
        "unpack",
        location,
        incomplete.detail,
    )


_COMMENT = re.compile(r"\([^()]*\)")
_WORD = re.compile(r'[^\s";]+')
_ENCODED = frozenset({"base64", "quoted-printable", "uuencode", "x-uuencode", "uue", "x-uue"})
_MID_PADDING = re.compile(r"=[^A-Za-z0-9+/]*[A-Za-z0-9+/]")  # base64 text after padding
_BASE64_SEGMENT = re.compile(r"[A-Za-z0-9+/]+")


def transfer_encoding(part: Message) -> str:
    """The part's Content-Transfer-Encoding as the most decoding mail client reads it: unfolded,
    without RFC 822 comments, quotes or a trailing ``;``, in lower case; of several such
    fields, the first that names an encoding.

    The stdlib compares the raw value of the first field: a folded ``base64``, ``base64
    (encoded)`` or a ``7bit`` field before the ``base64`` one left an attachment encoded, so
    what a client decodes reached no detector.
    """
    words = []
    for value in part.get_all("content-transfer-encoding", [])[:8]:
        text = str(value)[:256]  # a real value is one short word
        while (bare := _COMMENT.sub(" ", text)) != text:  # nested comments, innermost first
            text = bare
        word = _WORD.search(text)
        words.append(word.group().lower() if word else "")
    return next((w for w in words if w in _ENCODED), words[0] if words else "")


def decode_transfer(part: Message, encoding: str | None = None) -> object:
    """``part.get_payload(decode=True)`` for the encoding :func:`transfer_encoding` reads (``encoding``,
    when the caller has read it)."""
    encoding = transfer_encoding(part) if encoding is None else encoding
    if encoding != str(part.get("content-transfer-encoding", "")).lower():
        part.replace_header("content-transfer-encoding", encoding)  # the value get_payload compares
    return part.get_payload(decode=True)


def past_padding(part: Message, encoding: str) -> bytes | None:
    """A base64 part decoded on past padding in mid-text, as some clients do (the stdlib stops there);
    None when there is nothing after it. Scanned as an object of its own: what ends a list footer
    appended after the base64 would otherwise be read as garbage into the part's text."""
    if encoding != "base64":
        return None
    text = getattr(part, "_payload", None)  # as stored: get_payload() decodes 8-bit text, and may raise
    if not isinstance(text, str) or not _MID_PADDING.search(text):
        return None
    return b"".join(_base64_segment(segment) for segment in text.split("="))


def _base64_segment(text: str) -> bytes:
    letters = "".join(_BASE64_SEGMENT.findall(text))
    letters = letters[: len(letters) - len(letters) % 4] if len(letters) % 4 == 1 else letters
    return binascii.a2b_base64(letters + "=" * (-len(letters) % 4)) if letters else b""


def _encoded_message(part: Message, payload: list[Message | str]) -> bool:
    """A message/* part sent in base64 or quoted-printable (RFC 2046 forbids it; clients decode it).

    The stdlib parsed the encoded text as the inner message; that text is made the part's body
    again, so :func:`_leaf` decodes it and the expansion reads the message it holds.
    """
    if part.get_content_maintype() != "message" or transfer_encoding(part) not in _ENCODED:
        return False
    part.set_payload("".join(_as_parsed(inner) if isinstance(inner, Message) else inner for inner in payload))
    return True


def _as_parsed(inner: Message) -> str:
    """The text the parser read ``inner`` from. Encoded text seldom starts with header lines, and
    where they stop without an empty line (quoted-printable's ``=3D`` starts none), the generator's
    empty line after them would split a soft line break."""
    body = inner.get_payload()
    if not inner.keys() and isinstance(body, str):
        return body
    text = inner.as_string()  # no refolding (maxheaderlen 0)
    if any(isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in inner.defects):
        cut = text.find("\n\n")  # the first: a header value holds no empty line
        text = text[: cut + 1] + text[cut + 2 :] if cut >= 0 else text
    return text


def _leaf(part: Message, path: str, depth: int, encoding: str) -> tuple[ContentObject, list[str]]:
    """One MIME leaf, and what had to fall back while decoding it (each a ``parse-error`` detail).

    Every step is guarded on its own: a name in a broken RFC 2231 charset loses the
    name, not the content; a broken transfer encoding leaves the raw text to scan.
    """
    trouble: list[str] = []
    names = []
    for raw_name in raw_file_names(part, trouble):
        name, clean = decode_header(str(raw_name))
        name = normalise_name(name)
        if not clean:
            trouble.append(f"undecodable file name {name[:80]!r}")
        if name and name not in names:
            names.append(name)
    data: bytes | None = None
    try:
        decoded = decode_transfer(part, encoding)  # bytes for a leaf part
        data = decoded if isinstance(decoded, bytes) else None
    except Exception as exc:  # a broken encoding still leaves the raw text to scan
        trouble.append(f"transfer encoding failed ({type(exc).__name__}); raw text scanned")
    if data is None:
        data = undecoded_payload(part)
    damaged = sorted({type(d).__name__ for d in part.defects if "Base64" in type(d).__name__})
    if damaged:  # the stdlib decoded what it could, skipping what it could not
        trouble.append(f"damaged base64 ({', '.join(damaged)}); decoded what could be")
    declared, charset, disposition = (
        _part_header(part.get_content_type, "text/plain", trouble),
        _part_header(part.get_content_charset, "", trouble),
        _part_header(part.get_content_disposition, "", trouble),
    )
    if declared in _TEXT_TYPES and not decode_text(data, str(charset or ""))[1]:
        trouble.append(f"charset {str(charset)[:40]!r} does not decode the text; read as UTF-8 or Latin-1")
    label = names[0] if names else f"part {path}"
    return ContentObject(
        path=label,
        data=data,
        declared_type=declared,
        names=tuple(names),
        charset=str(charset or ""),
        depth=depth,
        disposition=disposition or "",
    ), trouble


def undecoded_payload(part: Message) -> bytes:
    """The part's body as it stands in the message, when its transfer encoding could not be undone."""
    try:
        payload = part.get_payload()
    except Exception:  # 8-bit text in a charset that cannot decode it (idna): the stored text itself
        payload = getattr(part, "_payload", None)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return payload if isinstance(payload, bytes) else b""


def raw_file_names(part: Message, trouble: list[str]) -> Iterator[str]:
    """The filename and the Content-Type name of ``part``, decoded as far as the sender's charset allows.

    RFC 2231 values are decoded here rather than by the stdlib, which raises for
    charsets such as idna: a name in a broken charset must still reach the
    file-name checks (``evil\xe9.exe`` is still an .exe).
    """
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        try:
            if param not in str(part.get(header, "")).lower():  # what get_param parses: no such parameter
                continue
            value = part.get_param(param, header=header)
            if isinstance(value, tuple):  # RFC 2231: (charset, language, percent-decoded text)
                charset, _, text = value
                value, clean = decode_text(text.encode("latin-1", "backslashreplace"), charset or "us-ascii")
                if not clean:
                    trouble.append(f"file name charset {str(charset)[:40]!r} does not decode it")
        except Exception as exc:
            trouble.append(f"file name not decodable ({type(exc).__name__})")
            continue
        if isinstance(value, str) and value.strip():
            yield value.strip()
    yield from _names_as_written(part)


# A (file)name parameter as written, quoted or bare; RFC 2231 forms are the stdlib's (above).
_NAME_PARAMETER = re.compile(r'(?i)\b(?:file)?name[ \t]*=[ \t]*(?:"([^"]*)"|([^\s;"]+))')


def _names_as_written(part: Message) -> Iterator[str]:
    """Every name parameter of every Content-Disposition and Content-Type field, and a bare name
    read on past a ``;`` to the next blank: the stdlib reads the first field's first parameter, a
    mail client may show another (``filename="a.txt"; filename="invoice.js"``, a second
    Content-Disposition, ``filename=invoice;.exe``), so each is checked."""
    for header in ("content-disposition", "content-type"):
        for value in part.get_all(header, [])[:4]:
            text = str(value)[:4096]
            for match in _NAME_PARAMETER.finditer(text):
                quoted, bare = match.groups()
                yield (quoted if quoted is not None else bare).strip()
                if bare is not None and (run := text[match.start(2) :].split(maxsplit=1)[0].rstrip(";")) != bare:
                    yield run


def _part_header(read: Callable[[], str | None], fallback: str, trouble: list[str]) -> str:
    try:
        return read() or fallback
    except Exception as exc:
        trouble.append(f"{read.__name__} failed ({type(exc).__name__})")
        return fallback


def _unparsed(raw: bytes, problems: list[Finding], limits: LimitSettings) -> ParsedMessage:
    """A message that was not parsed is still scanned whole, as raw bytes."""
    head = header_block(raw)
    try:
        headers, trouble = _decoded_headers(email.message_from_bytes(head + b"\n\n", policy=POLICY))
    except Exception:
        headers, trouble = (), []
    problems = problems + trouble
    data = raw[: limits.max_message_size]
    return ParsedMessage(
        headers=headers,
        objects=(ContentObject("raw message", data, "message/rfc822"),),
        problems=tuple(problems),
        size=len(raw),
        raw_headers=head,
        raw=raw,
    )
