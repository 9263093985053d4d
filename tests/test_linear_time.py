"""Hostile bytes cost linear time: the crafted inputs that once held a worker for seconds to minutes.

Each input below took seconds (or, scaled as here, minutes) with the old
patterns; the bounds are generous for a busy 2-core machine and still far
below what the old code needed.
"""

import base64
import time

import pytest

from mailward.mimeparse import stdlib_parse
from mailward.models.htmltext import html_to_text
from mailward.signatures.content import is_html_smuggling
from mailward.unpack import ooxml
from mailward.unpack.model import Allowance, Member, Stop
from mailward.unpack.passwords import password_candidates
from mailward.unpack.uuencode import unpack as unpack_uuencoded
from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import uuencoded

BOUND = 2.0  # seconds; the old code took 4.7 s to minutes on these inputs


def timed(function, *args):
    """Result and CPU seconds of the call (CPU, not wall time: other work on a shared CI host does not count)."""
    started = time.process_time()
    result = function(*args)
    return result, time.process_time() - started


def unterminated_begins(count: int, size: int = 1_200_000, line: bytes = b"x y\n") -> bytes:
    """``count`` uuencode ``begin`` lines without ``end`` and short filler lines, 1.2 MB in all.

    With 160 begins this took 80 s before: every begin decoded the rest of the body again.
    """
    block = line * (size // count // len(line))
    return b"".join(b"begin 644 part%d.bin\n" % i + block for i in range(count))


@pytest.mark.parametrize("count", [10, 160])
def test_uuencode_without_end_lines_is_linear(count):
    data = unterminated_begins(count)
    result, seconds = timed(unpack_uuencoded, data, "body", Allowance(bytes=256 << 20, members=1000))
    assert seconds < BOUND
    assert len(result.members) == count
    assert [m.data for m in result.members] == [b""] * count  # filler is not uuencoded data
    assert [i.stop for i in result.incomplete] == [Stop.CORRUPT]
    assert f"{count} uuencoded" in result.incomplete[0].detail


def test_yenc_and_binhex_without_end_lines_are_linear():
    page = b"=ybegin line=128 size=9 name=a.bin\n" + b"xyz\n" * 1000
    page = page * 300 + b"(This file must be converted with BinHex 4.0)\n:" + b"!!!!\n" * 100_000
    result, seconds = timed(unpack_uuencoded, page, "body", Allowance(bytes=10**8, members=1000))
    assert seconds < BOUND and result.incomplete


def test_uuencoded_blocks_are_each_decoded_once():
    data = unterminated_begins(20, size=200_000, line=b"M" + b"A" * 60 + b"\n")
    result = unpack_uuencoded(data, "body", Allowance(bytes=256 << 20, members=1000))
    assert 0 < sum(len(m.data) for m in result.members) < len(data)


def test_uuencoded_file_after_unterminated_ones_is_still_found(scan):
    body = unterminated_begins(160).decode() + uuencoded("eicar.com", EICAR).decode() + "\nbye\n"
    started = time.process_time()
    _, evidence = scan(message(body=body))
    assert time.process_time() - started < 10 * BOUND
    assert any(f.location == "part body > eicar.com" and f.category.value == "malware" for f in evidence.findings)
    assert any(f.name == Stop.CORRUPT.value for f in evidence.findings)


def test_data_uri_without_download_is_linear():
    page = b'<a href="data:a/b;base64,' + b"A" * 400_000 + b'">'
    found, seconds = timed(is_html_smuggling, page)
    assert not found and seconds < BOUND


@pytest.mark.parametrize(
    "page, expected",
    [
        (b'<p><a id=x href="data:application/octet-stream;base64,%s" download="invoice.exe">x</a>', True),
        (b"<A HREF='data:text/html;charset=utf-8;base64,%s' DOWNLOAD>", True),
        (b'<a href="data:application/zip;base64,%s">no download attribute</a>', False),
        (b'<a href="data:image/png;base64,%s" download>', False),
        (b'<a href="data:application/zip;base64,%s"><p download>', False),  # download of another tag
        (b'<a download="invoice.exe" href="data:application/octet-stream;base64,%s">', True),
        (b'<a href="data:application/octet-stream;base64,%w" download="a.exe">', True),  # line-wrapped
    ],
)
def test_data_uri_download_links(page, expected):
    payload = base64.b64encode(bytes(range(256)) * 12)
    wrapped = b"\r\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    assert is_html_smuggling(page.replace(b"%s", payload).replace(b"%w", wrapped)) is expected


@pytest.mark.parametrize(
    "page",
    [
        b"data:a/b;base64," * 200_000,  # empty payloads
        b"<a download=x " * 100_000 + b"data:a/b;base64,QUJD " * 50_000,  # names looked for nearby only
        b"data:" * 400_000,  # no base64 marker
        b"data:a/b" + b";" * 400_000,
    ],
)
def test_data_uri_members_are_linear(page):
    from mailward.unpack.datauri import unpack

    result, seconds = timed(unpack, page, "page.html", Allowance(bytes=10**8, members=10**6))
    assert seconds < BOUND


def test_many_unclosed_anchors_are_linear():
    found, seconds = timed(is_html_smuggling, b"<a href=data:a/" + b"<a " * 400_000)
    assert not found and seconds < BOUND


def test_password_keyword_before_a_long_blank_run_is_linear():
    found, seconds = timed(password_candidates, ["pw" + " " * 100_000 + "x", "Password:\n\t  s3cret7"], 8)
    assert seconds < BOUND and found == ("s3cret7",)


@pytest.mark.parametrize(
    "part_name, part",
    [
        ("word/_rels/document.xml.rels", b"<Relationship " * 100_000),
        ("word/_rels/document.xml.rels", b"<Relationship " + b'Type="x/oleObject" ' * 100_000),
        ("word/document.xml", b"<w:instrText " * 100_000),
        ("xl/externalLinks/externalLink1.xml", b"<ddeLink " + b'ddeService="a" ' * 100_000),
    ],
)
def test_unterminated_office_tags_are_linear(part_name, part):
    members = [Member("[Content_Types].xml", b""), Member(part_name, part)]
    found, seconds = timed(ooxml.observe, members)
    assert found == [] and seconds < BOUND


def test_office_active_content_is_still_seen():
    members = [
        Member("[Content_Types].xml", b""),
        Member(
            "word/_rels/settings.xml.rels",
            b'<Relationships><Relationship Id="r1" Target="http://198.51.100.7/t.dotm" TargetMode="External" '
            b'Type="http://schemas/relationships/attachedTemplate"/></Relationships>',
        ),
        Member("xl/externalLinks/externalLink1.xml", b'<ddeLink ddeService="cmd" ddeTopic="/c calc"/>'),
    ]
    details = [o.detail for o in ooxml.observe(members)]
    assert details == ["attachedTemplate -> http://198.51.100.7/t.dotm", "cmd|/c calc"]


def test_many_unclosed_script_tags_are_linear():
    result, seconds = timed(html_to_text, "<script>" * 200_000 + "<p>visible</p>")
    assert seconds < BOUND and "script" in result.tags


def test_in_process_handler_stops_at_its_cpu_budget(unpacker):  # noqa: F811  (shared fixture)
    """A handler that would decompress for long stops at its CPU allowance: unchecked for that object only."""
    from mailward.unpack import Kind
    from support.unpack import zipped

    members = {f"m{i}.txt": bytes(range(256)) * 4096 for i in range(40)}  # 40 MiB of output
    allowance = Allowance(bytes=256 << 20, members=1000, max_ratio=10_000, seconds=0.0)
    result, seconds = timed(unpacker.unpack, Kind.ZIP, zipped(members), "big.zip", allowance)
    assert [i.stop for i in result.incomplete] == [Stop.TIMEOUT]
    assert len(result.members) == 1 and seconds < BOUND


def test_a_long_header_line_without_a_colon_is_linear():
    raw = b"Subject: x\n" + b"a" * 1_000_000 + b"\n\nbody\n"
    root, seconds = timed(stdlib_parse, raw)
    assert seconds < BOUND
    assert root["subject"] == "x"
    assert root.get_payload().startswith("aaa")  # the stdlib's reading: the line starts the body


@pytest.mark.parametrize(
    "body",
    [
        b"--b" + b" " * 1_000_000 + b"x\n--b--\n",  # blanks after a separator, then not a boundary line after all
        b"--bx\n" * 200_000,  # lines that start like boundary lines
        b"--b\n" + b"X-A: b\n" * 100_000 + b"\nx\n--b--\n",  # a part with a huge header block
    ],
)
def test_multipart_bodies_are_linear(body):
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + body
    root, seconds = timed(stdlib_parse, raw)
    assert seconds < BOUND
    assert root.get_content_type() == "multipart/mixed"
