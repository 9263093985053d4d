"""Message-derived text made safe to print to an analyst's terminal or a JSON line.

Hostile mail aims at the reviewer too: ESC sequences that rewrite the terminal,
BEL, CR that overwrites a line, bidi overrides (U+202E) that reverse a file name,
lone surrogates left by undecodable bytes. Every printer passes text from a
message through :func:`neutralise` (or :func:`json_line` for ``--json``), so
those characters arrive as visible escapes instead of acting.
"""

from __future__ import annotations

import json
import re
import unicodedata

# Control, format (bidi, zero-width), surrogate, private-use, unassigned, line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (bytes a decoder could not read, kept by ``surrogateescape``)
    as U+FFFD: what a database, a UTF-8 log file or an SMTP server takes, where they raise."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def _escaped(ch: str) -> bool:
    return unicodedata.category(ch) in _ESCAPED_CATEGORIES


def neutralise(text: str, multiline: bool = False) -> str:
    """``text`` with every control, format or unassigned character shown as an escape.

    With ``multiline`` line breaks (normalised to ``\\n``) and tabs are kept.
    """
    if multiline:
        text = text.replace("\r\n", "\n")
    if not _NOT_PRINTABLE_ASCII.search(text):  # the usual case: nothing to look at
        return text
    out = []
    for ch in text:
        if multiline and ch in "\n\t":
            out.append(ch)
        elif _escaped(ch):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def json_line(doc: object) -> str:
    """``doc`` as one line of JSON whose every string is terminal-safe.

    Letters of any script stay readable (not ``ensure_ascii``); the characters
    :func:`neutralise` escapes are written as JSON ``\\uXXXX`` escapes, which
    decode back to the same string.
    """
    return safe_json(json.dumps(doc, ensure_ascii=False))


def safe_json(text: str) -> str:
    """JSON text (``ensure_ascii=False``) with the characters :func:`neutralise` escapes written as
    ``\\uXXXX``: C1 controls, bidi overrides and line separators act on no terminal and split no line."""
    if not _NOT_PRINTABLE_ASCII.search(text):
        return text
    return "".join(_json_escape(ch) if ord(ch) > 0x7E and _escaped(ch) else ch for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
