"""HTML to the text a reader sees, plus the markup tricks spammers hide behind.

Regex passes over the whole document, not a DOM and not a loop per tag: HTML
mail has hundreds of tags, and this runs in the SMTP path. Every pattern is
bounded, so hostile markup (unclosed comments, endless tags) costs linear time.
Tags inside a word (``vi<b></b>agra``) and comments (``vi<!-- x -->agra``) are
removed without a space, so the word a reader sees is the word the model sees.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_BLOCK_NAMES = (
    "address|article|br|caption|center|dd|div|dl|dt|footer|form|h[1-6]|header|hr|li|ol|option|p|pre|"
    "section|select|table|tbody|td|textarea|tfoot|th|thead|title|tr|ul"
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:-]{0,20})([^<>]{0,4000})>")  # (slash, name, attributes)
_BLOCK_TAG = re.compile(rf"</?(?:{_BLOCK_NAMES})(?![a-zA-Z0-9:-])[^<>]{{0,4000}}>", re.I)
_BLOCK = frozenset(_BLOCK_NAMES.replace("h[1-6]", "h1|h2|h3|h4|h5|h6").split("|"))
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)  # an unclosed one runs to the end
_DECLARATION = re.compile(r"<[!?][^<>]{0,4000}>")  # doctype, processing instruction
_SKIPPED = re.compile(r"<(script|style|noscript|xml)(?![a-zA-Z0-9:-])", re.I)  # content nobody reads
_END_OF = {name: re.compile(rf"</{name}", re.I) for name in ("script", "style", "noscript", "xml")}
_ANCHOR = re.compile(r"<a(\s[^<>]{0,4000})>(.{0,300}?)</a\s*>", re.I | re.S)
_ATTR = re.compile(r"""([a-zA-Z_:-]{1,30})\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""")
_HREF = re.compile(r"""href\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""", re.I)
_STYLE = re.compile(r"style\s*=", re.I)
_ATTRIBUTES_READ = frozenset(
    ("a", "img", "font", "form", "input", "iframe", "frame", "embed", "object", "body", "area", "base", "link")
)
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:\.\d+)?(?:px|pt)?\b|opacity\s*:\s*0(?:\.0*)?\b"
)
_WHITE = frozenset(("#fff", "#ffffff", "white", "#fefefe", "#fdfdfd"))
# &#65;-&#90;, &#97;-&#122; and their hex forms: plain letters hidden from word filters.
_LETTER_ENTITY = re.compile(
    r"&#0*(?:6[5-9]|[78]\d|90|9[7-9]|1[01]\d|12[0-2]);"
    r"|&#x0*(?:4[1-9a-f]|5[0-9a]|6[1-9a-f]|7[0-9a]);",
    re.I,
)
# Both start with a literal "<" (the regex engine skips to it) and look behind for the word before.
_WORD_SPLIT_BY_TAGS = re.compile(r"<(?<=[^\W_]<)[a-zA-Z/][^<>]{0,200}>(?:<[a-zA-Z/][^<>]{0,200}>)*(?=[^\W_])")
_WORD_SPLIT_BY_COMMENT = re.compile(r"<!--(?<=[^\W_]<!--).{0,200}?-->(?=[^\W_])", re.S)


@dataclass(frozen=True)
class HtmlText:
    """What one HTML part says, what it links to, and which tricks it uses."""

    text: str
    links: tuple[tuple[str, str], ...]  # (href, visible anchor text; "" when the anchor never closes)
    sources: tuple[str, ...]  # img/iframe/form/background targets
    tags: frozenset[str]  # tag names used
    tricks: frozenset[str]  # e.g. "hidden-text", "comment-in-word"


def html_to_text(markup: str) -> HtmlText:
    """Visible text and markup features of ``markup`` (already decoded to str)."""
    tricks: set[str] = set()
    if _LETTER_ENTITY.search(markup):
        tricks.add("entity-letters")
    if _WORD_SPLIT_BY_COMMENT.search(markup):
        tricks.add("comment-in-word")
    markup = _COMMENT.sub("", markup)
    markup, skipped = _without_unread_content(markup)
    if any(not _BLOCK_TAG.search(m.group()) for m in _WORD_SPLIT_BY_TAGS.finditer(markup)):
        tricks.add("tag-in-word")

    text, tags, hrefs, sources = read_tags(markup, tricks)
    tags |= skipped
    text = _DECLARATION.sub("", text)
    shown: dict[str, list[str]] = {}  # href -> texts of its closed anchors, in document order
    for raw_attrs, inner in _ANCHOR.findall(markup):
        href = _HREF.search(raw_attrs)
        if href:
            shown.setdefault(html.unescape(href.group(1).strip("\"'")), []).append(
                html.unescape(_TAG.sub("", inner)).strip()
            )
    links = tuple((h, shown[h].pop(0) if shown.get(h) else "") for h in hrefs)
    return HtmlText(html.unescape(text), links, tuple(sources), frozenset(tags), frozenset(tricks))


def read_tags(markup: str, tricks: set[str]) -> tuple[str, set[str], list[str], list[str]]:
    """``markup`` with every tag removed (a block tag leaves a line break), the tag names used, and
    the link and source targets, in document order; adds the tricks the attributes show.

    One split in C and a loop that reads attributes only where they can be evidence: HTML mail
    has hundreds of tags, and a callback per tag cost more than the rest of this module.
    """
    pieces = _TAG.split(markup)  # text, then (slash, name, attributes, text) per tag
    if len(pieces) == 1:
        return markup, set(), [], []
    names = "\0".join(pieces[2::4]).lower().split("\0")  # names are ASCII letters, digits, ":" and "-"
    hrefs: list[str] = []
    sources: list[str] = []
    for slash, name, raw_attrs in zip(pieces[1::4], names, pieces[3::4]):
        if raw_attrs and not slash:
            read_attributes(name, raw_attrs, tricks, hrefs, sources)
    texts = pieces[0::4]
    joined = texts + texts[1:]  # the texts, with the tags' separators between them
    joined[0::2] = texts
    joined[1::2] = ["\n" if name in _BLOCK else "" for name in names]
    return "".join(joined), set(names), hrefs, sources


def read_attributes(name: str, raw_attrs: str, tricks: set[str], hrefs: list[str], sources: list[str]) -> None:
    """What the attributes of an opening tag ``name`` (lower-case) show: tricks, its link, its sources.

    Most tags: nothing in their attributes is evidence, and they are not parsed.
    """
    if name in _ATTRIBUTES_READ or _STYLE.search(raw_attrs):
        attrs = {k.lower(): v.strip("\"'") for k, v in _ATTR.findall(raw_attrs)}
        _attribute_tricks(name, attrs, tricks)
        if name == "a" and "href" in attrs:
            hrefs.append(html.unescape(attrs["href"]))
        sources.extend(html.unescape(attrs[key]) for key in ("src", "action", "background") if key in attrs)


def _without_unread_content(markup: str) -> tuple[str, set[str]]:
    """``markup`` minus script/style/noscript/xml content (their tags stay), and which of them occurred.

    Once a closing tag was not found, it is not looked for again: many
    unclosed ``<script`` tags would each rescan the rest of the markup.
    """
    kept, names, pos = [], set(), 0
    unclosed: set[str] = set()
    while (start := _SKIPPED.search(markup, pos)) is not None:
        name = start.group(1).lower()
        names.add(name)
        end = None if name in unclosed else _END_OF[name].search(markup, start.end())
        if end is None:
            unclosed.add(name)
        kept.append(markup[pos : start.start()])
        pos = end.start() if end is not None else start.end()
    kept.append(markup[pos:])
    return "".join(kept), names


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
