"""Fast paths give exactly what the plain code they replace gave: the shipped model scores
tokens, clues and header splits made the old way, so any difference would change verdicts.

Across real corpora, ``bench/model_steps.py --baseline`` proves the same for whole messages.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mailward.config import LimitSettings
from mailward.message import parse_message, split_message
from mailward.models.classifier import strongest_first
from mailward.models.htmltext import _BLOCK, _TAG, read_attributes, read_tags
from mailward.models.tokens import _CHARS_PER_WORD, _CJK, _CJK_PAIRS, _INVISIBLE, _WORD, _generalised, words_of

_HEADER_END = re.compile(rb"\r?\n\r?\n")  # the rule split_message implements without a regex


def _split_by_regex(raw: bytes) -> tuple[bytes, bytes]:
    end = _HEADER_END.search(raw)
    return (raw[: end.start()], raw[end.end() :]) if end else (raw, b"")


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b":", b" "]), max_size=40).map(b"".join))
def test_split_message_is_the_first_crlf_or_lf_blank_line(raw):
    assert split_message(raw) == _split_by_regex(raw)


def test_split_message_on_mixed_line_ends():
    assert split_message(b"A: 1\r\nB: 2\n\r\nbody\n\nmore") == (b"A: 1\r\nB: 2", b"body\n\nmore")
    assert split_message(b"A: 1\n\nbody\r\n\r\n") == (b"A: 1", b"body\r\n\r\n")
    assert split_message(b"\r\n\r\nbody") == (b"", b"body")
    assert split_message(b"A: 1\r\nB: 2") == (b"A: 1\r\nB: 2", b"")


@given(
    st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.25, -1.25, 2.0, -3.0, 0.1]), max_size=60)
    | st.lists(st.floats(-20, 20, width=32), max_size=60),
    st.integers(1, 15),
)
def test_strongest_first_is_a_stable_sort_by_magnitude(values, n):
    weights = np.array(values, dtype=np.float32)
    expected = np.argsort(-np.abs(weights), kind="stable")[:n]
    assert strongest_first(weights, n).tolist() == expected.tolist()


def test_header_lookups_are_case_blind_first_match_and_all_in_order():
    raw = b"Subject: one\r\nX-Tag: a\r\nsubject: two\r\nx-tag: b\r\nX-TAG: c\r\n\r\nbody\r\n"
    message = parse_message(raw, LimitSettings())
    assert message.header("SUBJECT") == "one"
    assert message.subject == "one"
    assert message.header_all("x-Tag") == ["a", "b", "c"]
    assert message.header("missing", "none") == "none"
    assert message.header_all("missing") == []
    message.header_all("x-tag").append("changed")  # a caller's list is its own
    assert message.header_all("x-tag") == ["a", "b", "c"]


def _words_of_v1(text: str, limit: int = 1 << 30) -> list[str]:
    """words_of as TOKENIZER_VERSION 1 shipped it, every step on every text."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text[: _CHARS_PER_WORD * limit])).casefold()
    out: list[str] = []
    for word in _WORD.findall(text):
        if _CJK.search(word):
            out.extend(word[i : i + 2] for i in range(min(len(word) - 1, _CJK_PAIRS)))
        else:
            out.append(word if len(word) <= 4 or (len(word) <= 20 and not word.isdigit()) else _generalised(word))
        if len(out) >= limit:
            break
    return out[:limit]


_MAIL_TEXT = st.lists(
    st.sampled_from(list("aZq09_ -.,!$\n\t@/:") + ["\u00e9", "\u00ad", "\u200b", "\ufb01", "\u65e5\u672c", "\u00b2"]),
    max_size=300,
).map("".join)


@given(
    st.one_of(_MAIL_TEXT, st.text(max_size=200), st.from_regex(r"[ -~\n]{0,400}", fullmatch=True)), st.integers(1, 60)
)
def test_words_of_gives_the_version_1_words(text, limit):
    assert words_of(text, limit) == _words_of_v1(text, limit)
    assert words_of(text) == _words_of_v1(text)


def _read_tags_v1(markup: str, tricks: set[str]) -> tuple[str, set[str], list[str], list[str]]:
    """The tag pass of html_to_text as TOKENIZER_VERSION 1 shipped it: a callback per tag (the
    attributes read as they still are)."""
    tags: set[str] = set()
    hrefs: list[str] = []
    sources: list[str] = []

    def read_tag(match: re.Match[str]) -> str:
        slash, name, raw_attrs = match.groups()
        name = name.lower()
        tags.add(name)
        if raw_attrs and not slash:
            read_attributes(name, raw_attrs, tricks, hrefs, sources)
        return "\n" if name in _BLOCK else ""

    return _TAG.sub(read_tag, markup), tags, hrefs, sources


_MARKUP = st.lists(
    st.sampled_from(
        [
            "<a href='http://x.example/a'>",
            '<A HREF="mailto:b@c">',
            "</a>",
            "<p>",
            "</DIV>",
            "<br/>",
            "<brx>",
            "<h1 class=t>",
            "<font color=white size=1>",
            "<FONT COLOR=#FFFFFF>",
            "<img width=1 src='http://i.example/p.gif'>",
            "<span style='display:none'>",
            '<td style="color: #fff">',
            "<form action=https://f.example/><input type=password>",
            "<x:y>",
            "<" + "b" * 25 + ">",
            "<body background=bg.png>",
            "vi",
            "agra",
            "&amp;",
            "<",
            ">",
            "/",
            " ",
            "\n",
            "=",
            "'",
        ]
    ),
    max_size=40,
).map("".join)


@given(_MARKUP | st.text(alphabet="<>/a=b'\" pP\n", max_size=80))
def test_read_tags_gives_the_version_1_text_tags_links_and_tricks(markup):
    new_tricks: set[str] = set()
    old_tricks: set[str] = set()
    assert read_tags(markup, new_tricks) == _read_tags_v1(markup, old_tricks)
    assert new_tricks == old_tricks
