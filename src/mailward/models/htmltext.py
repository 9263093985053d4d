"""HTML to the text a reader sees, plus the markup tricks spammers hide behind.

A regex scanner, not a DOM: every pattern is bounded, so hostile markup
(unclosed comments, endless tags) costs linear time. Tags inside a word
(``vi<b></b>agra``) and comments (``vi<!-- x -->agra``) are removed without a
space, so the word a reader sees is the word the model sees.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_MARKUP = re.compile(
    r"<!--.*?(?:-->|\Z)"                                  # comment (an unclosed one runs to the end)
    r"|<(/?)([a-zA-Z][a-zA-Z0-9:-]{0,20})([^<>]{0,4000})>"  # start or end tag with its attributes
    r"|<[!?][^<>]{0,4000}>",                              # doctype, processing instruction
    re.S,
)
_ATTR = re.compile(r"""([a-zA-Z_:-]{1,30})\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""")
_BLOCK = frozenset(
    "address article br caption center dd div dl dt footer form h1 h2 h3 h4 h5 h6 header hr li ol option "
    "p pre section select table tbody td textarea tfoot th thead title tr ul".split()
)
_SKIP_CONTENT = frozenset(("script", "style", "noscript", "xml"))
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:\.\d+)?(?:px|pt)?\b|opacity\s*:\s*0(?:\.0*)?\b"
)
_WHITE = frozenset(("#fff", "#ffffff", "white", "#fefefe", "#fdfdfd"))
_NUMERIC_ENTITY = re.compile(r"&#(x?)([0-9a-fA-F]{1,7});")
_END_OF = {name: re.compile(rf"</{name}", re.I) for name in _SKIP_CONTENT}


@dataclass(frozen=True)
class HtmlText:
    """What one HTML part says, what it links to, and which tricks it uses."""

    text: str
    links: tuple[tuple[str, str], ...]   # (href, visible anchor text)
    sources: tuple[str, ...]             # img/iframe/script/form targets
    tags: frozenset[str]                 # tag names used
    tricks: frozenset[str]               # e.g. "hidden-text", "comment-in-word"


def html_to_text(markup: str) -> HtmlText:
    """Visible text and markup features of ``markup`` (already decoded to str)."""
    out: list[str] = []
    visible = 0                                # characters in ``out`` so far
    seams: dict[int, str] = {}                 # where markup vanished from the text -> which trick if mid-word
    links: list[tuple[str, str]] = []
    sources: list[str] = []
    tags: set[str] = set()
    tricks: set[str] = set()
    anchor: tuple[str, int] | None = None     # (href, index into out where its text starts)
    pos = 0
    length = len(markup)
    if _letters_as_entities(markup):
        tricks.add("entity-letters")
    while pos < length:
        match = _MARKUP.search(markup, pos)
        if match is None:
            out.append(markup[pos:])
            break
        before = markup[pos:match.start()]
        out.append(before)
        visible += len(before)
        pos = match.end()
        if match.group(0).startswith("<!--"):
            seams.setdefault(visible, "comment-in-word")
            continue
        name = (match.group(2) or "").lower()
        if not name:
            continue
        tags.add(name)
        if name in _BLOCK:
            out.append("\n")
            visible += 1
        else:
            seams.setdefault(visible, "tag-in-word")
        if match.group(1) == "/":
            if name == "a" and anchor is not None:
                links.append((anchor[0], "".join(out[anchor[1]:]).strip()))
                anchor = None
            continue
        if name in _SKIP_CONTENT:
            end = _END_OF[name].search(markup, pos)
            if end is not None:
                pos = end.start()
            continue
        attrs = {k.lower(): v.strip("\"'") for k, v in _ATTR.findall(match.group(3) or "")}
        _attribute_tricks(name, attrs, tricks)
        if name == "a" and "href" in attrs:
            anchor = (html.unescape(attrs["href"]), len(out))
        for key in ("src", "action", "background"):
            if key in attrs:
                sources.append(html.unescape(attrs[key]))
    if anchor is not None:
        links.append((anchor[0], "".join(out[anchor[1]:]).strip()))
    raw_text = "".join(out)
    for at, trick in seams.items():
        if 0 < at < len(raw_text) and raw_text[at - 1].isalnum() and raw_text[at].isalnum():
            tricks.add(trick)     # markup inside a word splits it for filters, not for readers
    return HtmlText(html.unescape(raw_text), tuple(links), tuple(sources), frozenset(tags), frozenset(tricks))


def _letters_as_entities(markup: str) -> bool:
    """Plain letters written as numeric entities (``&#118;iagra``) hide words from filters."""
    for match in _NUMERIC_ENTITY.finditer(markup):
        code = int(match.group(2), 16 if match.group(1) else 10) if match.group(1) or match.group(2).isdigit() else 0
        if 65 <= code <= 90 or 97 <= code <= 122:
            return True
    return False


def _attribute_tricks(name: str, attrs: dict[str, str], tricks: set[str]) -> None:
    style = attrs.get("style", "").lower()
    if style and _HIDDEN_STYLE.search(style):
        tricks.add("hidden-text")
    if name == "font":
        if attrs.get("size", "").strip() in ("0", "1", "-2", "-3", "-4"):
            tricks.add("tiny-font")
        if attrs.get("color", "").lower() in _WHITE:
            tricks.add("white-text")
    if "color:" in style and any(f"color:{w}" in style.replace(" ", "") for w in _WHITE):
        tricks.add("white-text")
    if name == "img":
        width, height = attrs.get("width", ""), attrs.get("height", "")
        if width in ("0", "1") or height in ("0", "1"):
            tricks.add("web-bug")
    if name in ("form", "input") and attrs.get("type", "").lower() == "password":
        tricks.add("password-field")
