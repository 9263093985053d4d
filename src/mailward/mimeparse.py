"""The stdlib's MIME tree (``compat32``), built without its line loop where the result is certain.

``email.message_from_bytes`` reads every line of a message through a generator, a
deque and a regex per line (and, inside a multipart, a boundary regex per line),
then joins the lines of each body again: most of a worker's parse. The mail that
arrives is nearly always plain: a single part, or one level of parts. For that
mail :func:`stdlib_parse` builds the same tree from a few scans in C and hands
anything else to the stdlib whole, so no detector can see a difference:

* no line ends in a lone CR (the stdlib ends a line there too);
* every header block is fields and their continuations (after an optional mbox
  ``From`` line), each line ending in LF or CRLF, up to an empty line or a line
  the stdlib does not read as header (then it notes the missing empty line and
  the body starts there, as in pre-tokenised corpus files): it reads the same
  fields (name as written, value without the blanks after the colon and the
  final line end) and ends them there;
* a multipart (not a digest, which defaults its parts to message/rfc822) has a
  boundary, one boundary line or more before its closing one, no two boundary
  lines in a row, and parts that are neither multipart nor message/*.

Every scan is a literal search or a regex anchored where a field or a boundary
line must start: linear time on any input.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import re
from email.message import Message

FIELD_LIMIT = 16384  # characters of a header field's value kept; real ones are far shorter
PARAMETER_FIELD_LIMIT = 4096  # for the fields whose parameters the stdlib splits (quadratic in their number)
_PARAMETER_FIELDS = frozenset({"content-type", "content-disposition"})


class BoundedFields(email.policy.Compat32):
    """``compat32`` with each header field's value cut to :data:`FIELD_LIMIT` characters.

    The stdlib's encoded-word decoding and parameter splitting take time quadratic in a
    field's length: one 3 MB Content-Type of ``;`` held a worker for minutes. What lies past
    the cut of such a field is no part's content; the message's bytes are not changed.
    """

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, bounded(name, value)


def bounded(name: str, value: str) -> str:
    """``value`` cut as :class:`BoundedFields` cuts the field ``name``."""
    if len(value) <= PARAMETER_FIELD_LIMIT:  # nearly every field: no name to compare
        return value
    return value[: PARAMETER_FIELD_LIMIT if name.lower() in _PARAMETER_FIELDS else FIELD_LIMIT]


POLICY = BoundedFields()
# A header field and its continuation lines, each ending in LF (compat32: blanks after the colon are
# not part of the value). Names and first characters of continuations are disjoint: linear time.
_FIELD = re.compile(r"([\041-\071\073-\176]+):[ \t]*([^\n]*\n(?:[ \t][^\n]*\n)*)")
# A line the stdlib reads as part of the header block (email.feedparser.headerRE).
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_NESTED = ("multipart", "message")  # types the stdlib parses as more parts
_MAX_DEPTH = 4  # multiparts nested deeper than this are left to the stdlib


def header_end(raw: bytes, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """Where the header block from ``start`` ends and where its body starts (before ``end``); None
    when there is no empty line.

    The first ``\\r?\\n\\r?\\n``, found with two literal scans: a regex starting with an
    optional character is tried at every byte, and this runs on every message.
    """
    end = len(raw) if end is None else end
    lf_crlf = raw.find(b"\n\r\n", start, end)  # the milter hands CRLF mail: usually found here, the next scan is short
    lf_lf = raw.find(b"\n\n", start, lf_crlf + 1 if lf_crlf >= 0 else end)
    newline = lf_lf if lf_lf >= 0 else lf_crlf
    if newline < 0:
        return None
    before = newline - 1 if newline > start and raw[newline - 1] == 0x0D else newline  # "\r" before it
    return before, newline + (2 if newline == lf_lf else 3)


def stdlib_parse(raw: bytes) -> Message:
    """The tree ``email.message_from_bytes(raw, policy=POLICY)`` gives (see the module docstring)."""
    text = raw.decode("ascii", "surrogateescape")  # as BytesParser does: one character per byte
    root = None
    if b"\r" not in raw or raw.count(b"\r") == raw.count(b"\r\n"):  # a lone CR ends a line too
        try:
            root = _Text(raw, text).message(0, len(raw), depth=0)
        except Exception:  # noqa: S110  (whatever the headers provoke, the stdlib's parse meets it too)
            root = None
    return root if root is not None else email.message_from_string(text, policy=POLICY)


class _Text:
    """One message as bytes (for literal scans) and as the stdlib's text: the same offsets in both."""

    def __init__(self, raw: bytes, text: str):
        self.raw, self.text = raw, text

    def message(self, start: int, end: int, depth: int) -> Message | None:
        """The part in ``[start:end]`` at ``depth`` (0: the message), or None when the stdlib could
        read it differently."""
        raw, text = self.raw, self.text
        msg = Message(policy=POLICY)
        if raw.startswith((b"\n", b"\r\n"), start, end):  # no header fields: the empty line ends them
            body = start + (1 if raw[start] == 0x0A else 2)
        else:
            ends = header_end(raw, start, end)
            fields_end = ends[0] + (2 if raw[ends[0]] == 0x0D else 1) if ends else end
            stop = self._read_fields(msg, start, fields_end)
            if stop == fields_end:
                body = ends[1] if ends else end
            elif _HEADER_LINE.match(text, stop, end):  # a line the stdlib reads as a broken field: left to it
                return None
            else:  # the stdlib's reading of a line that is no field: the header block ends, the body starts
                msg.defects.append(email.errors.MissingHeaderBodySeparatorDefect())
                body = stop
        maintype = msg.get_content_maintype()
        if maintype not in _NESTED:
            # In a multipart, the line end before a boundary line belongs to it (RFC 2046).
            msg.set_payload(_without_line_end(text[body:end]) if depth else text[body:end])
            return msg
        if maintype != "multipart" or depth >= _MAX_DEPTH or not self._read_parts(msg, body, end, depth):
            return None
        if depth:  # ...as does the one before a multipart part's end (none left: None, as the stdlib has it)
            msg.epilogue = _without_line_end(msg.epilogue) if msg.epilogue else None
        return msg

    def _read_fields(self, msg: Message, pos: int, end: int) -> int:
        """Add the header fields from ``pos`` on to ``msg``; where they stop: ``end``, or the start of
        the first line that is no field, continuation or (first) mbox ``From`` line."""
        text = self.text
        line_end = text.find("\n", pos, end) + 1
        if line_end and text.startswith("From ", pos, end):  # an mbox envelope line
            msg.set_unixfrom(text[pos:line_end].rstrip("\r\n"))
            pos = line_end
        while pos < end:  # matched where each field must start: a search would retry at every byte
            field = _FIELD.match(text, pos, end)
            if field is None:
                return pos
            msg.set_raw(field.group(1), bounded(field.group(1), field.group(2).rstrip("\r\n")))
            pos = field.end()
        return pos

    def _read_parts(self, msg: Message, body: int, end: int, depth: int) -> bool:
        """Attach the parts of the multipart ``msg`` whose body is ``[body:end]``, with its preamble,
        epilogue and defects as the stdlib sets them; False when that is not certain."""
        boundary = msg.get_boundary()
        if boundary is None or "\n" in boundary or "\r" in boundary or msg.get_content_type() == "multipart/digest":
            return False
        # The stdlib's boundary line: the separator, "--" when closing, blanks, the line end.
        lines = re.compile("^--" + re.escape(boundary) + r"(--)?[ \t]*\r?$", re.M)
        cuts: list[tuple[int, int]] = []  # (start, end after its line end) of each boundary line, closing one last
        closed = False
        for match in lines.finditer(self.text, body, end):
            if cuts and cuts[-1][1] == match.start():  # the stdlib skips a run of boundary lines
                return False
            cuts.append((match.start(), match.end() + (match.end() < end)))  # and its LF
            if match.group(1):
                closed = True
                break
        if not closed or len(cuts) < 2:  # an unclosed multipart, or none before the closing line: defects
            return False
        parts = []
        for (_, start), (stop, _) in zip(cuts, cuts[1:]):
            part = self.message(start, stop, depth + 1)
            if part is None:
                return False
            parts.append(part)
        if str(msg.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
            msg.defects.append(email.errors.InvalidMultipartContentTransferEncodingDefect())
        if cuts[0][0] > body:
            msg.preamble = _without_line_end(self.text[body : cuts[0][0]])
        for part in parts:
            msg.attach(part)
        msg.epilogue = self.text[cuts[-1][1] : end]
        return True


def _without_line_end(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith(("\n", "\r")) else text
