"""Show a quarantined message to an analyst without ever interpreting its content.

Hostile mail aims at the reviewer too: escape sequences that rewrite the
terminal, bidi overrides that reverse a file name, HTML that loads beacons.
So every string from the message passes :func:`neutralise` (control and
format characters become visible ``\\xNN``/``\\uNNNN`` escapes), text bodies are
shown as their source behind a ``| `` margin (so a body cannot impersonate the
report around it), HTML is never rendered, and attachments are only sized,
hashed and typed from their first bytes by libmagic — nothing is opened by an
application, unpacked or executed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message

import magic

from ..message import decode_header_value, decode_text, decode_transfer, raw_file_names, undecoded_payload
from ..mimeparse import stdlib_parse
from ..textsafe import neutralise
from .records import AuditEvent, QuarantineRecord

TEXT_LIMIT = 64 * 1024  # characters of each text part shown
MAGIC_BYTES = 64 * 1024
_VAGUE_TYPES = {"text/plain", "application/octet-stream", "inode/x-empty", "application/x-empty", "unknown"}
_FOLD = re.compile(r"\r?\n[ \t]+")


@dataclass(frozen=True)
class PartView:
    """One node of the MIME tree as shown: containers have no size or hash."""

    number: str  # IMAP-style: "" for the whole message, "1", "2.1", ...
    depth: int
    declared_type: str
    real_type: str = ""  # libmagic's opinion of the decoded bytes (leaves only)
    filename: str = ""
    disposition: str = ""
    size: int | None = None
    sha256: str = ""
    text: str | None = None  # decoded text of inline text parts
    truncated: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "part": self.number or "message",
            "depth": self.depth,
            "declared_type": self.declared_type,
            "real_type": self.real_type,
            "filename": self.filename,
            "disposition": self.disposition,
            "size": self.size,
            "sha256": self.sha256,
            "text": self.text,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class MessageView:
    headers: tuple[tuple[str, str], ...]
    parts: tuple[PartView, ...]
    problem: str = ""  # why the structure could not be shown completely


def inspect_message(raw: bytes, max_parts: int = 1000, max_depth: int = 20) -> MessageView:
    """Headers and the MIME tree of ``raw``, walked iteratively within limits."""
    try:
        root = stdlib_parse(raw)  # the scanner's tree: fields cut where the stdlib's parsing turns quadratic
    except RecursionError:
        return MessageView((), (), "MIME nesting too deep to parse")
    headers = tuple((str(k), decode_header_value(_FOLD.sub(" ", str(v)))) for k, v in root.items())
    parts: list[PartView] = []
    problem = ""
    stack = [(root, "", 0)]
    while stack:
        part, number, depth = stack.pop()
        if len(parts) >= max_parts:
            problem = f"more than {max_parts} parts: the rest is not shown"
            break
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            parts.append(PartView(number, depth, part.get_content_type()))
            if depth >= max_depth:
                problem = f"parts nested deeper than {max_depth} are not shown"
                continue
            children = [(c, f"{number}.{i}" if number else str(i), depth + 1) for i, c in enumerate(payload, 1)]
            stack.extend(reversed(children))
        else:
            parts.append(_leaf(part, number or "1", depth))
    return MessageView(headers, tuple(parts), problem)


def _leaf(part: Message, number: str, depth: int) -> PartView:
    data: bytes | None = None
    try:
        decoded_payload = decode_transfer(part)  # bytes for a leaf part
        data = decoded_payload if isinstance(decoded_payload, bytes) else None
    except Exception:  # a broken transfer encoding: show the undecoded text's size and hash
        pass
    if data is None:
        data = undecoded_payload(part)
    filename = next(raw_file_names(part, []), "")
    declared = part.get_content_type()
    disposition = part.get_content_disposition() or ""
    text = None
    truncated = False
    if declared.startswith("text/") and disposition != "attachment":
        decoded = decode_text(data, part.get_content_charset() or "")[0]
        truncated = len(decoded) > TEXT_LIMIT
        text = decoded[:TEXT_LIMIT]
    return PartView(
        number,
        depth,
        declared,
        _real_type(data),
        decode_header_value(str(filename)),
        disposition,
        len(data),
        hashlib.sha256(data).hexdigest(),
        text,
        truncated,
    )


def _real_type(data: bytes) -> str:
    try:
        return magic.from_buffer(data[:MAGIC_BYTES], mime=True)
    except Exception:  # libmagic failing on odd bytes must not hide the rest of the report
        return "unknown"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_show(record: QuarantineRecord, view: MessageView) -> str:
    """The analyst's report on one message, safe to print to a terminal."""

    def n(s: object) -> str:
        return neutralise(str(s))

    env = record.envelope
    lines = [
        f"Quarantine ID:  {n(record.id)}",
        f"Received:       {when(record.received_at)}",
        f"Direction:      {record.direction.value}",
        f"Status:         {record.status.value}" + (f" ({when(record.released_at)})" if record.released_at else ""),
        f"Label:          {record.label.value if record.label else '-'}",
        f"Verdict:        {record.action} ({n(', '.join(record.reasons)) or '-'})",
        f"Envelope from:  <{n(env.mail_from)}>",
        f"Recipients:     {n(', '.join(env.recipients))}",
        f"Client:         {n(env.client_name or '-')} [{n(env.client_address or '-')}] helo={n(env.helo or '-')}"
        + (f" auth={n(env.auth_user)}" if env.auth_user else ""),
        f"Queue ID:       {n(env.queue_id or '-')}",
        f"Size:           {record.size} bytes",
        f"SHA-256:        {record.sha256}",
    ]
    spam = record.evidence.spam
    if spam is None:
        lines.append("Spam score:     -")
    else:
        model = f" (model {n(spam.model_version)})" if spam.model_version else ""
        lines.append(f"Spam score:     {spam.score:.3f}{model}")
        for clue in spam.clues:
            lines.append(f"    {clue.weight:+7.3f}  {n(clue.token)}")
    lines += ["", "Findings:"]
    for f in record.evidence.findings or ():
        where = f" at {n(f.location)}" if f.location else ""
        detail = f" — {n(f.detail)}" if f.detail else ""
        lines.append(f"  [{f.severity.name.lower()}] {f.category.value} {n(f.name)} ({n(f.detector)}){where}{detail}")
    if not record.evidence.findings:
        lines.append("  (none)")
    lines += ["", "Headers:"]
    lines += [f"  {n(k)}: {n(v)}" for k, v in view.headers]
    lines += ["", "Parts:"]
    for p in view.parts:
        label = p.number or "message"
        indent = "  " * p.depth
        if p.size is None:
            lines.append(f"  {indent}{label:<8} {n(p.declared_type)}")
            continue
        name = f' "{n(p.filename)}"' if p.filename else ""
        disp = f" {n(p.disposition)}" if p.disposition else ""
        mismatch = "  (type differs from declared)" if _differs(p) else ""
        lines.append(
            f"  {indent}{label:<8} {n(p.declared_type)}{name}{disp}  real: {n(p.real_type)}{mismatch}"
            f"  {p.size} B  sha256 {p.sha256}"
        )
    if view.problem:
        lines.append(f"  ! {view.problem}")
    for p in view.parts:
        if p.text is None:
            continue
        lines += ["", f"Text of part {p.number} ({n(p.declared_type)}, shown as source, never rendered):"]
        lines += [f"  | {line}" for line in neutralise(p.text, multiline=True).split("\n")]
        if p.truncated:
            lines.append(f"  ! truncated after {TEXT_LIMIT} characters")
    return "\n".join(lines) + "\n"


def render_list(records: list[QuarantineRecord]) -> str:
    """One line per record, every field neutralised and clipped to its column."""
    rows = [("ID", "RECEIVED (UTC)", "DIR", "VERDICT", "STATUS", "LABEL", "SIZE", "SENDER", "RECIPIENT", "SUBJECT")]
    for r in records:
        rows.append(
            (
                r.id,
                when(r.received_at).removesuffix(" UTC"),
                r.direction.value[:3],
                f"{r.action}:{','.join(r.reasons)}",
                r.status.value,
                r.label.value if r.label else "-",
                str(r.size),
                r.envelope.mail_from or "<>",
                _recipients(r.envelope.recipients),
                r.subject,
            )
        )
    widths = (24, 19, 3, 24, 9, 5, 9, 32, 32, 60)
    return "".join("  ".join(_clip(neutralise(str(c)), w) for c, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def _recipients(recipients: tuple[str, ...]) -> str:
    """The first recipient, and how many more: the column stays one short line."""
    if not recipients:
        return "-"
    more = len(recipients) - 1
    return f"{recipients[0]} +{more}" if more else recipients[0]


def render_history(events: list[AuditEvent]) -> str:
    lines = [
        f"{when(e.at)}  {neutralise(e.action):<14} {neutralise(e.actor.name)}@{neutralise(e.actor.host)}"
        + (f" ({neutralise(e.actor.origin)})" if e.actor.origin else "")
        + (f"  {neutralise(e.detail)}" if e.detail else "")
        for e in events
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def _differs(part: PartView) -> bool:
    """A real type that contradicts the declared one (libmagic's vague answers contradict nothing)."""
    return part.real_type not in _VAGUE_TYPES and part.real_type != part.declared_type


def _clip(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"
