"""The object tree: public shape kept for other detectors, sniffed types, MIME limits, deadlines."""

import base64
import quopri
import random
import time
from dataclasses import replace

import pytest

from mailward.config import LimitSettings
from mailward.message import ContentObject, parse_message
from mailward.unpack import Kind
from mailward.unpack.passwords import password_candidates
from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import zipped


def test_text_parts_stay_text_for_the_tokenizer(unpacker):
    raw = message(body="Grüße aus Köln\n", html="<p>Hallo</p>", attachments=[("a.zip", zipped({"b.txt": b"member"}))])
    parsed = parse_message(raw, LimitSettings(), unpacker)
    texts = list(parsed.text_objects())
    assert [t.declared_type for t in texts] == ["text/plain", "text/html"]
    assert "Grüße" in texts[0].text()
    member = next(o for o in parsed.objects if o.path == "a.zip > b.txt")
    assert not member.is_text and member.kind is Kind.TEXT and member.in_archive
    assert parsed.subject == "Documents" and parsed.problems == ()


def test_declared_and_sniffed_types_are_both_kept(unpacker):
    parsed = parse_message(message(attachments=[("photo.jpg", zipped({"x": b"y"}))]), LimitSettings(), unpacker)
    attachment = parsed.objects[1]
    assert attachment.declared_type == "application/octet-stream"
    assert (attachment.sniffed_type, attachment.kind) == ("application/zip", Kind.ZIP)


def test_content_object_defaults_keep_old_callers_working():
    obj = ContentObject("x", b"abc")
    assert obj.kind is Kind.OTHER and obj.has_content and obj.sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d"


def test_without_an_unpacker_a_temporary_one_is_used():
    parsed = parse_message(message(attachments=[("a.zip", zipped({"eicar.com": EICAR}))]), LimitSettings())
    assert [o.path for o in parsed.objects] == ["part 1", "a.zip", "a.zip > eicar.com"]


def test_deeply_nested_multiparts_are_unchecked_not_a_crash(unpacker):
    depth = 2000
    head = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    raw = ("From: a@example.org\nSubject: deep\n" + head + "Content-Type: text/plain\n\nx\n").encode()
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert {p.name for p in parsed.problems} & {"nesting-too-deep", "too-many-parts"}


def test_more_objects_than_allowed_are_unchecked(unpacker):
    limits = replace(LimitSettings(), max_objects=5)
    parsed = parse_message(message(attachments=[(f"f{i}.txt", b"x") for i in range(10)]), limits, unpacker)
    assert len(parsed.objects) == 5 and "too-many-objects" in {p.name for p in parsed.problems}


def test_inspect_deadline_leaves_the_rest_unchecked(unpacker):
    limits = replace(LimitSettings(), inspect_deadline=0.0)
    parsed = parse_message(message(attachments=[("a.zip", zipped({"b.txt": b"x"}))]), limits, unpacker)
    assert "inspect-deadline" in {p.name for p in parsed.problems}
    assert not any(o.in_archive for o in parsed.objects)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The password is: Xk42!q.", ("Xk42!q",)),
        ("Passwort: 1234\nPW 9876", ("1234", "9876")),
        ("<p>Archive password: <b>abc123</b></p>", ("abc123",)),
        ("Nothing here", ()),
    ],
)
def test_password_candidates(text, expected):
    assert password_candidates([text], 8) == expected


def _with_attachment(field: str, body: str) -> bytes:
    return (
        'From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        '--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="readme.dat"\r\n'
        f"{field}\r\n\r\n{body}\r\n--B--\r\n"
    ).encode()


_B64 = base64.b64encode(EICAR).decode()


@pytest.mark.parametrize(
    "field,body",
    [
        ("Content-Transfer-Encoding: base64", _B64),
        ("Content-Transfer-Encoding:\r\n base64", _B64),  # folded
        ("Content-Transfer-Encoding: base64 (encoded)", _B64),  # an RFC 822 comment
        ("Content-Transfer-Encoding: (a (nested) comment) Base64", _B64),
        ('Content-Transfer-Encoding: "base64"', _B64),
        ("Content-Transfer-Encoding: base64;", _B64),
        ("Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64", _B64),  # the second names one
        (
            "Content-Transfer-Encoding: base64",
            base64.b64encode(EICAR[:11]).decode() + "\r\n" + base64.b64encode(EICAR[11:]).decode(),
        ),
    ],
)
def test_an_attachment_is_decoded_as_a_mail_client_decodes_it(unpacker, field, body):
    """The stdlib left each of these encoded (it compares the raw field; it stops at padding)."""
    parsed = parse_message(_with_attachment(field, body), LimitSettings(), unpacker)
    attachment = next(o for o in parsed.objects if o.names == ("readme.dat",))
    past = [o.data for o in parsed.objects if o.path == "readme.dat > base64 past its padding"]
    assert EICAR in attachment.data or EICAR in past[0]


@pytest.mark.parametrize("encode", [base64.encodebytes, quopri.encodestring], ids=["base64", "quoted-printable"])
def test_a_forwarded_message_sent_encoded_is_read_inside(unpacker, encode):
    inner = message(attachments=[("eicar.com", EICAR)], subject="inner")
    encoding = "base64" if encode is base64.encodebytes else "quoted-printable"
    raw = (
        b"From: a@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="O"\r\n\r\n'
        b"--O\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: "
        + encoding.encode()
        + b"\r\n\r\n"
        + encode(inner)
        + b"\r\n--O--\r\n"
    )
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert any(o.names == ("eicar.com",) and o.data == EICAR for o in parsed.objects)


def test_blank_lines_cost_libmagic_little(unpacker):
    # libmagic spent ~250 ms of CPU on 64 KB of newlines: a zip of 40 such members cost ~10 s, unchecked nothing.
    blank = {f"log{i}.txt": b"x" + b"\n" * 65535 for i in range(40)}
    blank["pad.bin"] = random.Random(7).randbytes(400_000)  # keeps the zip under the compression-ratio limit
    raw = message(attachments=[("logs.zip", zipped(blank)), ("blank.txt", b"\r\n" * 32768)])
    started = time.process_time()
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert time.process_time() - started < 2
    logs = [o for o in parsed.objects if o.path.startswith("logs.zip > log")]
    assert len(logs) == 40 and {(o.sniffed_type, o.kind) for o in logs} == {("text/plain", Kind.TEXT)}
    assert next(o for o in parsed.objects if o.path == "blank.txt").kind is Kind.TEXT


def test_markup_after_blank_lines_is_still_html(unpacker):
    page = b"\n" * 6000 + b"<html><body><script>location='https://evil.test/'</script></body></html>\n"
    parsed = parse_message(message(attachments=[("page.txt", page)]), LimitSettings(), unpacker)
    attachment = next(o for o in parsed.objects if o.path == "page.txt")
    assert (attachment.sniffed_type, attachment.kind) == ("text/html", Kind.HTML)


def test_inspect_deadline_stops_sniffing_but_keeps_every_object(unpacker):
    limits = replace(LimitSettings(), inspect_deadline=0.0)
    raw = message(attachments=[(f"f{i}.bin", b"MZ" + bytes(100)) for i in range(3)])
    parsed = parse_message(raw, limits, unpacker)
    assert [p.name for p in parsed.problems] == ["inspect-deadline"]
    attachments = [o for o in parsed.objects if o.path.startswith("f")]
    assert [o.path for o in attachments] == ["f0.bin", "f1.bin", "f2.bin"]
    assert all(o.sniffed_type == "" and o.kind is Kind.OTHER for o in attachments)


@pytest.mark.parametrize(
    "fields,dangerous",
    [
        ('Content-Disposition: attachment; filename="a.txt"; filename="invoice.js"', "invoice.js"),
        (
            'Content-Disposition: attachment; filename="a.txt"\r\nContent-Disposition: attachment; filename="run.js"',
            "run.js",
        ),
        ("Content-Disposition: attachment; filename=invoice;.exe", "invoice;.exe"),
        (
            'Content-Disposition: attachment; filename="a.txt"\r\nContent-Type: text/plain; name="setup.vbs"',
            "setup.vbs",
        ),
    ],
)
def test_every_name_a_client_may_show_is_checked(unpacker, fields, dangerous):
    """The stdlib reads the first field's first parameter; a mail client may show another."""
    raw = (
        'From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f"--B\r\n{fields}\r\n\r\nWScript.Echo 1\r\n--B--\r\n"
    ).encode()
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert any(dangerous in o.names for o in parsed.objects), [o.names for o in parsed.objects]


def test_a_bare_name_is_read_past_a_semicolon_only_where_one_follows_it(unpacker):
    raw = (
        b'From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--B\r\nContent-Disposition: attachment; filename=report.txt; size=3\r\n\r\nabc\r\n--B--\r\n"
    )
    [attachment] = [o for o in parse_message(raw, LimitSettings(), unpacker).objects if "report.txt" in o.names]
    assert attachment.names == ("report.txt",)  # not "report.txt; size=3" as well
