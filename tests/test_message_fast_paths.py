"""The parser's fast paths build exactly the tree the stdlib parse they replace builds: every
header, the envelope line, the payload and the defects, so every detector reads the same message.

Across real corpora, ``bench/model_steps.py --baseline`` proves the same for whole messages.
"""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.config import LimitSettings
from mailward.message import _DELIMITER, _decoded_headers, parse_message
from mailward.mimeparse import FIELD_LIMIT, POLICY, stdlib_parse
from mutants import mutants, seeds_from
from support.mail import mime_mail as message

FIXTURES = Path(__file__).parent / "fixtures" / "mail"


def tree(msg: Message) -> dict[str, object]:
    """Everything a parsed Message holds, its parts' too (defects by type: they compare by identity)."""
    out = {k: v for k, v in vars(msg).items() if k not in ("policy", "defects")}
    out["defects"] = [type(d).__name__ for d in msg.defects]
    if isinstance(msg._payload, list):
        out["_payload"] = [tree(part) for part in msg._payload]
    return out


def assert_as_stdlib(raw: bytes) -> None:
    assert tree(stdlib_parse(raw)) == tree(email.message_from_bytes(raw, policy=POLICY))


# Pieces of header blocks where the two could part: line ends (a lone CR ends a line for the stdlib),
# folding, mbox envelope lines, fields without a name or a colon, types with parts, 8-bit bytes.
_PIECES = [
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"From ",
    b"From: a@b\n",
    b"Subject: hi",
    b"X-A:",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Type: multipart/mixed; boundary=b",
    b"Content-Type: message/rfc822",
    b"content-type: MESSAGE/delivery-status",
    b"--b",
    b"\xe9",
    b"=?utf-8?q?x?=",
    b"body",
]


@settings(max_examples=600)
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join))
def test_any_bytes_parse_as_the_stdlib_parses_them(raw):
    assert_as_stdlib(raw)


@given(
    st.lists(st.sampled_from(_PIECES[:-1]), max_size=12).map(b"".join),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n", b"\r\r\n\r\n"]),
    st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join),
)
def test_header_block_and_body_parse_as_the_stdlib_parses_them(head, blank, body):
    assert_as_stdlib(b"Received: x\r\n" + head + blank + body)
    assert_as_stdlib(b"From a@b Mon Jan  1 00:00:00 2024\n" + head + blank + body)


# Lines of multipart bodies: boundary lines of two levels (closing, with blanks, run together, without a
# line end), near misses, part headers of every kind, blank lines, a lone CR.
_BODY_LINES = [
    b"--b\n",
    b"--b--\n",
    b"--b \t\r\n",
    b"--b--",
    b"--bb\n",
    b"--b--x\n",
    b"--c\n",
    b"--c--\r\n",
    b"\n",
    b"\r\n",
    b"text\n",
    b"\r",
    b"X: y\n",
    b" folded\n",
    b"From x\n",
    b"Content-Type: text/html\n",
    b"Content-Type: multipart/alternative; boundary=c\n",
    b"Content-Type: multipart/digest; boundary=c\n",
    b"Content-Type: message/rfc822\n",
]


@settings(max_examples=1500)
@given(
    st.sampled_from([b"", b"Content-Transfer-Encoding: base64\n", b"Content-Type: multipart/mixed\n"]),
    st.lists(st.sampled_from(_BODY_LINES), max_size=40).map(b"".join),
)
def test_multipart_bodies_parse_as_the_stdlib_parses_them(extra, body):
    raw = b"Content-Type: multipart/mixed; boundary=b\n" + extra + b"\n" + body
    assert_as_stdlib(raw)
    assert_as_stdlib(raw.replace(b"\n", b"\r\n"))


def test_nested_parts_keep_their_preambles_and_epilogues():
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\npre\n--b\n"
        b"Content-Type: multipart/alternative; boundary=c\n\ninner pre\n--c\n\nplain\n--c\n"
        b"Content-Type: text/html\n\n<p>hi</p>\n\n--c--\ninner epilogue\n\n--b\n\nlast\n--b--\nepilogue\n"
    )
    assert_as_stdlib(raw)
    parsed = stdlib_parse(raw)
    inner = parsed.get_payload(0)
    assert [p.get_payload() for p in inner.get_payload()] == ["plain", "<p>hi</p>\n"]
    assert (parsed.preamble, inner.preamble, inner.epilogue, parsed.epilogue) == (
        "pre",
        "inner pre",
        "inner epilogue\n",
        "epilogue\n",
    )


def test_a_digest_and_a_run_of_boundary_lines_parse_as_the_stdlib_parses_them():
    digest = b"Content-Type: multipart/digest; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n--b--\n"
    assert_as_stdlib(digest)
    assert stdlib_parse(digest).get_payload(0).get_default_type() == "message/rfc822"
    assert_as_stdlib(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nhello\n--b\n--b--\n")


def test_a_header_block_without_an_empty_line_parses_as_the_stdlib_parses_it():
    """Pre-tokenised corpus files and broken mail: the first line that is no field starts the body."""
    for raw in [
        b"Subject: x\nbody line\nmore\n",
        b"Subject: x\nbody\n\nmore\n",
        b"Subject: x\r\n+ + body\r\n",
        b"hello\nSubject: x\n\n",
        b"From a@b Mon\nbody\n",
        b"Subject: x",
        b"Subject: x\ny",
        b"Subject: x\n:no name\n\nbody\n",
        b"Subject: x\nFrom y\n",
        b"Subject: x\nFrom y\nbody\n",
        b"Content-Type: multipart/mixed; boundary=b\nbody\n--b\n\nx\n--b--\n",
    ]:
        assert_as_stdlib(raw)
    parsed = stdlib_parse(b"Subject: x\nbody line\n")
    assert [type(d).__name__ for d in parsed.defects] == ["MissingHeaderBodySeparatorDefect"]
    assert parsed.get_payload() == "body line\n"


def test_folded_fields_keep_their_line_ends_and_blanks():
    raw = b"Subject:  \t one\r\n two\r\n\tthree \r\nX-Empty:\r\nX-Blank: \r\n\r\n body\r\n"
    assert_as_stdlib(raw)
    parsed = stdlib_parse(raw)
    assert parsed["subject"] == "one\r\n two\r\n\tthree "
    assert parsed["x-empty"] == "" and parsed["x-blank"] == ""
    assert parsed.get_payload() == " body\r\n"


def test_the_fixture_mail_and_its_mutants_parse_as_the_stdlib_parses_them():
    seeds = seeds_from([FIXTURES])
    seeds += [message(html="<p>Hi</p>", attachments=[("a.txt", b"hello")])]
    for raw in seeds:
        assert_as_stdlib(raw)
        assert_as_stdlib(raw.replace(b"\n", b"\r\n"))
    for _, raw in mutants(seeds, 400, seed=17):
        assert_as_stdlib(raw)


def test_a_message_with_parts_is_still_walked_whole():
    raw = message(html="<p>Hi</p>", attachments=[("a.zip", b"PK\x05\x06" + bytes(18))])
    parsed = parse_message(raw, LimitSettings())
    assert [o.declared_type for o in parsed.objects][:2] == ["text/plain", "text/html"]


_HEADER_VALUES = st.lists(
    st.sampled_from(
        [b"plain", b" ", b"\xe9", b"\xff\xfe", b"=?utf-8?q?caf=C3=A9?=", b"=?x-bad?b?////?=", b"=?utf-8?b?", b"\t"]
    ),
    max_size=8,
).map(b"".join)


@given(st.lists(st.tuples(st.sampled_from([b"Subject", b"From", b"X-A"]), _HEADER_VALUES), max_size=6))
def test_decoded_headers_read_the_raw_values_as_compat32_items_give_them(fields):
    """Only values that are not ASCII text go through the policy: the rest it returns as they are."""
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\nbody\r\n"
    root = stdlib_parse(raw)
    as_items = Message()
    for name, value in root.items():  # what the decoder read before: every value through the policy
        as_items.set_raw(name, value)
    assert _decoded_headers(root) == _decoded_headers(as_items)


@given(
    st.lists(
        st.sampled_from([b"--b\n", b"--\n", b"--b--\r\n", b"\n", b"x", b"-", b"--" + b"a" * 71 + b"\n"]), max_size=30
    )
)
def test_too_many_boundary_lines_are_refused_as_the_delimiter_count_refuses_them(pieces):
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"".join(pieces)
    limits = LimitSettings(max_parts=2)
    refused = len(_DELIMITER.findall(raw)) > 2 * limits.max_parts + 2
    problems = parse_message(raw, limits).problems
    assert any(p.name == "too-many-parts" and "boundary lines" in p.detail for p in problems) == refused


def test_a_field_past_the_limit_is_cut_alike_on_both_paths():
    for name in ("Subject", "Content-Type"):
        raw = f"From: a@example.org\n{name}: text/plain; x={'y' * (FIELD_LIMIT + 10)}\n\nbody\n".encode()
        assert_as_stdlib(raw)
        assert len(stdlib_parse(raw)[name]) < FIELD_LIMIT + 10
