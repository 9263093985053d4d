"""Archives become objects; bombs, depth, member counts and encryption become unchecked evidence."""

import time
from dataclasses import replace

import pytest

from mailward.config import LimitSettings
from mailward.evidence import Category
from mailward.message import parse_message
from mailward.unpack import MemberState
from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import (
    aes_zip,
    binhexed,
    encrypted_office,
    encrypted_pdf,
    iso_image,
    names_at,
    nested_zip,
    overlapping_zip,
    rar4_encrypted,
    rar4_stored,
    seven_zip,
    tar_gz,
    tnef,
    uuencoded,
    yencoded,
    zipped,
)

MiB = 1024 * 1024


def malware_locations(evidence):
    return {f.location for f in evidence.findings if f.category is Category.MALWARE}


def test_eicar_in_zip_in_zip_is_found_where_it_is(scan):
    nested = zipped({"docs/inner.zip": zipped({"eicar.com": EICAR})})
    parsed, evidence = scan(message(attachments=[("invoice.zip", nested)]))
    assert malware_locations(evidence) == {"invoice.zip > docs/inner.zip > eicar.com"}
    eicar = next(o for o in parsed.objects if o.path.endswith("eicar.com"))
    assert (eicar.depth, eicar.in_archive, eicar.parent, eicar.container) == (
        3,
        True,
        "invoice.zip > docs/inner.zip",
        "zip",
    )
    assert eicar.names == ("eicar.com",)
    assert eicar.sha256 == "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    assert eicar.md5 == "44d88612fea8a8f36de82e1278abb02f"


@pytest.mark.parametrize(
    "name, build",
    [
        ("a.tar.gz", lambda: tar_gz({"dir/eicar.com": EICAR})),
        ("a.7z", lambda: seven_zip({"eicar.com": EICAR})),
        ("a.rar", lambda: rar4_stored({"eicar.com": EICAR})),
        ("a.iso", lambda: iso_image({"eicar.com": EICAR})),
        ("winmail.dat", lambda: tnef({"eicar.com": EICAR})),
    ],
)
def test_every_container_format_is_opened(scan, name, build):
    _, evidence = scan(message(attachments=[(name, build())]))
    assert any(loc.startswith(f"{name} > ") and loc.endswith("eicar.com") for loc in malware_locations(evidence)), (
        evidence.findings
    )


def test_bzip2_and_xz_streams_are_opened(scan):
    import bz2
    import lzma

    _, evidence = scan(message(attachments=[("x.com.bz2", bz2.compress(EICAR)), ("y.com.xz", lzma.compress(EICAR))]))
    assert malware_locations(evidence) == {"x.com.bz2 > x.com", "y.com.xz > y.com"}


def test_uuencoded_file_in_the_body_is_an_object(scan):
    body = "Here it is:\n\n" + uuencoded("eicar.com", EICAR).decode() + "\nbye\n"
    parsed, evidence = scan(message(body=body))
    assert malware_locations(evidence) == {"part body > eicar.com"}
    assert parsed.objects[0].is_text and "Here it is" in parsed.objects[0].text()


@pytest.mark.parametrize("lead", [b"{\\rtf1 Hello}\n", b"Hello\0 there\n", b"%PDF-1.4 is what we use\n"])
def test_uuencoded_file_in_a_text_body_that_sniffs_as_something_else(scan, lead):
    from support.mail import literal

    raw = literal(
        [("From", "a@example.org"), ("To", "u@example.com"), ("Subject", "docs"), ("Content-Type", "text/plain")],
        lead + b"see the file\n" + uuencoded("eicar.com", EICAR),
        eol="\n",
    )
    _, evidence = scan(raw)
    assert malware_locations(evidence) == {"part body > eicar.com"}


def test_yenc_file_in_the_body_is_an_object(scan):
    from support.mail import literal

    headers = [("From", "a@example.org"), ("Content-Type", "text/plain; charset=iso-8859-1")]
    raw = literal(
        [*headers, ("Content-Transfer-Encoding", "8bit")], b"Here:\n" + yencoded("eicar.com", EICAR), eol="\n"
    )
    _, evidence = scan(raw)
    assert malware_locations(evidence) == {"part body > eicar.com"}


def test_binhex_attachment_is_decoded(scan):
    payload = EICAR + b"\0" * 40 + b"\x90 tail"  # a run of zeros and a literal 0x90: both encodings
    parsed, evidence = scan(message(attachments=[("scan.hqx", binhexed("invoice.exe", payload))]))
    member = next(o for o in parsed.objects if o.path == "scan.hqx > invoice.exe")
    assert member.data == payload
    assert "banned-extension" in names_at(evidence, "scan.hqx > invoice.exe")


def test_uuencoded_file_in_an_attachment_no_other_handler_reads(scan):
    blob = b"\0\1\2 notes\n" + uuencoded("eicar.com", EICAR)
    _, evidence = scan(message(attachments=[("notes.dat", blob)]))
    assert malware_locations(evidence) == {"notes.dat > eicar.com"}


def _self_extracting(prefix: bytes, members: dict[str, bytes]) -> bytes:
    """A zip appended to ``prefix`` with offsets counted from the file's start, as self-extractors are."""
    import io
    import zipfile

    buf = io.BytesIO()
    buf.write(prefix)
    with zipfile.ZipFile(buf, "a") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, build, location",
    [
        ("photos.zip", lambda: b"GIF89a\1\0\1\0\0\0\0;" + b"\0" * 100 + zipped({"eicar.com": EICAR}), "photos.zip"),
        ("photos.zip", lambda: b"Archive follows.\r\n" * 3 + zipped({"eicar.com": EICAR}), "photos.zip"),
        ("data.bin", lambda: _self_extracting(b"\x89PNG\r\n\x1a\n" + b"\0" * 600, {"eicar.com": EICAR}), "data.bin"),
        (
            "scan.jpg",
            lambda: b"\xff\xd8\xff\xe0" + b"\0" * 300 + seven_zip({"eicar.com": EICAR}),
            "scan.jpg > 7z at offset 304",
        ),
        (
            "scan.jpg",
            lambda: b"\xff\xd8\xff\xe0" + b"\0" * 300 + rar4_stored({"eicar.com": EICAR}),
            "scan.jpg > rar at offset 304",
        ),
    ],
)
def test_archive_behind_other_bytes_is_opened(scan, name, build, location):
    _, evidence = scan(message(attachments=[(name, build())]))
    assert malware_locations(evidence) == {f"{location} > eicar.com"}
    assert "polyglot" in names_at(evidence, name)


def test_email_inside_an_archive_is_parsed(scan):
    inner = message(subject="inner", attachments=[("eicar.com", EICAR)])
    _, evidence = scan(message(attachments=[("fwd.zip", zipped({"mail.eml": inner}))]))
    assert malware_locations(evidence) == {"fwd.zip > mail.eml > eicar.com"}


def test_ratio_bomb_stops_at_the_ratio_limit_quickly(unpacker):
    bomb = zipped({"zeros.bin": b"\0" * (64 * MiB)})
    limits = replace(LimitSettings(), min_unpack_budget=256 * MiB)  # so the ratio, not the budget, stops it
    started = time.monotonic()
    parsed = parse_message(message(attachments=[("bomb.zip", bomb)]), limits, unpacker)
    assert time.monotonic() - started < 5
    assert ("compression-ratio", "bomb.zip") in {(p.name, p.location) for p in parsed.problems}
    zeros = next(o for o in parsed.objects if o.path == "bomb.zip > zeros.bin")
    assert zeros.state is MemberState.TRUNCATED and len(zeros.data) < 2 * 200 * len(bomb)


def test_bomb_costs_at_most_the_budget(scan):
    _, evidence = scan(message(attachments=[("bomb.zip", zipped({"zeros.bin": b"\0" * (64 * MiB)}))]))
    assert names_at(evidence, "bomb.zip") & {"unpack-budget", "compression-ratio"}


def test_gzip_bomb_stops_at_the_ratio_limit(scan):
    import gzip

    _, evidence = scan(message(attachments=[("z.gz", gzip.compress(b"\0" * (32 * MiB)))]))
    assert "compression-ratio" in names_at(evidence, "z.gz")


def test_budget_counts_real_output_across_members(unpacker):
    limits = replace(LimitSettings(), max_ratio=10**9, min_unpack_budget=2 * MiB, unpack_budget_factor=1)
    members = {f"m{i}.bin": bytes([i]) * MiB for i in range(5)}
    parsed = parse_message(message(attachments=[("big.zip", zipped(members))]), limits, unpacker)
    problems = {(p.name, p.location) for p in parsed.problems}
    assert ("unpack-budget", "big.zip") in problems
    produced = sum(len(o.data) for o in parsed.objects if o.in_archive)
    assert produced <= 2 * MiB


def test_depth_twelve_is_unchecked(scan):
    parsed, evidence = scan(message(attachments=[("deep.zip", nested_zip(12))]))
    deep = [f for f in evidence.findings if f.name == "nesting-too-deep"]
    assert deep and deep[0].category is Category.UNCHECKED
    assert max(o.depth for o in parsed.objects) == 10


def test_five_thousand_members_are_unchecked(scan):
    many = zipped({f"f{i}.txt": b"x" for i in range(5000)}, method=0)
    started = time.monotonic()
    parsed, evidence = scan(message(attachments=[("many.zip", many)]))
    assert time.monotonic() - started < 10
    assert "too-many-members" in names_at(evidence, "many.zip")
    assert len(parsed.objects) <= 1000


def test_overlapping_entries_are_refused(scan):
    parsed, evidence = scan(message(attachments=[("overlap.zip", overlapping_zip())]))
    assert "overlapping-entries" in names_at(evidence, "overlap.zip")
    assert not any(o.in_archive for o in parsed.objects)


def test_aes_zip_opens_with_the_password_from_the_body(scan):
    archive = aes_zip({"eicar.com": EICAR}, "Xk42!q")
    _, evidence = scan(message(body="The archive password is: Xk42!q\n", attachments=[("secure.zip", archive)]))
    assert malware_locations(evidence) == {"secure.zip > eicar.com"}
    assert "encrypted" not in names_at(evidence)
    assert "encrypted-opened" in names_at(evidence, "secure.zip")


def test_aes_zip_without_password_is_unchecked_but_names_are_checked(scan):
    archive = aes_zip({"invoice.pdf.exe": b"MZ" + b"\0" * 100}, "Xk42!q")
    parsed, evidence = scan(message(body="See attachment.\n", attachments=[("secure.zip", archive)]))
    encrypted = [f for f in evidence.findings if f.name == "encrypted"]
    assert encrypted and encrypted[0].category is Category.UNCHECKED and encrypted[0].location == "secure.zip"
    member = next(o for o in parsed.objects if o.in_archive)
    assert member.state is MemberState.ENCRYPTED and member.data == b""
    assert {"double-extension", "banned-extension"} <= names_at(evidence, "secure.zip > invoice.pdf.exe")


def test_encrypted_7z_with_and_without_password(scan):
    archive = seven_zip({"eicar.com": EICAR}, password="s3cret")
    _, locked = scan(message(attachments=[("a.7z", archive)]))
    assert "encrypted" in names_at(locked, "a.7z")
    _, opened = scan(message(body="pw: s3cret\n", attachments=[("a.7z", archive)]))
    assert malware_locations(opened) == {"a.7z > eicar.com"}


def test_corrupt_archive_is_unchecked(scan):
    broken = zipped({"a.txt": b"hello" * 1000})[:-30]
    _, evidence = scan(message(attachments=[("broken.zip", broken)]))
    assert any(f.category is Category.UNCHECKED and f.location == "broken.zip" for f in evidence.findings)


def test_unsupported_archive_format_is_unchecked(scan):
    cab = b"MSCF\0\0\0\0" + b"\0" * 200
    _, evidence = scan(message(attachments=[("a.cab", cab)]))
    assert "unsupported" in names_at(evidence, "a.cab")


def _cyclic_aes_zip(count: int, passwords: list[str]) -> bytes:
    """Members encrypted with ``passwords`` in turn: the last one that worked never fits the next member."""
    import io

    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_STORED, encryption=pyzipper.WZ_AES) as archive:
        for i in range(count):
            archive.setpassword(passwords[i % len(passwords)].encode())
            archive.writestr(f"f{i}.txt", b"hello %d" % i)
    return buf.getvalue()


def test_alternating_aes_passwords_cost_a_bounded_number_of_tries(scan):
    # Each wrong AES password costs a key derivation (~1 ms); 600 members in turn cost ~4.5 s, and passed.
    passwords = [f"Pw{i}x{i}Secret" for i in range(8)]
    archive = _cyclic_aes_zip(600, passwords)
    body = "".join(f"Password: {p}\n" for p in passwords)
    started = time.process_time()
    parsed, evidence = scan(message(body=body, attachments=[("files.zip", archive)]))
    assert time.process_time() - started < 2
    trials = [f for f in evidence.findings if f.name == "password-trials"]
    assert trials and trials[0].category is Category.UNCHECKED and trials[0].location == "files.zip"
    members = [o for o in parsed.objects if o.in_archive]
    assert len(members) == 600  # every name is still checked
    assert sum(o.state is MemberState.COMPLETE for o in members) >= 8
    assert "encrypted" not in names_at(evidence, "files.zip")


def test_wrong_password_tries_are_counted_per_message(unpacker):
    passwords = [f"Pw{i}x{i}Secret" for i in range(8)]
    last = aes_zip({"a.txt": b"hello"}, passwords[-1])  # opens on the eighth try: seven wrong ones
    body = "".join(f"Password: {p}\n" for p in passwords)
    limits = replace(LimitSettings(), password_trials=10)
    raw = message(body=body, attachments=[("one.zip", last), ("two.zip", last)])
    parsed = parse_message(raw, limits, unpacker)
    assert {(p.name, p.location) for p in parsed.problems} == {("password-trials", "two.zip")}
    assert next(o for o in parsed.objects if o.path == "one.zip > a.txt").data == b"hello"
    assert next(o for o in parsed.objects if o.path == "two.zip > a.txt").state is MemberState.ENCRYPTED


_ENCRYPTED = {
    "7z": lambda: seven_zip({"a.txt": b"hello", "b.txt": b"world"}, password="not-in-the-text"),
    "rar": lambda: rar4_encrypted({"a.txt": b"hello", "b.txt": b"world"}, "not-in-the-text"),
    "docx": lambda: encrypted_office("not-in-the-text"),
    "pdf": lambda: encrypted_pdf("not-in-the-text"),
}


@pytest.mark.parametrize("suffix", sorted(_ENCRYPTED))
def test_wrong_passwords_are_bounded_in_time_whatever_price_the_file_sets(unpacker, suffix):
    """Each wrong password derives a key at the price the file sets (7z ~65 ms, Office and RAR tens of
    ms, each RAR member again): 12 such files and 8 candidates took 6 to 19 s of a worker. The message's
    wrong tries stop at ``password_time`` (and ``password_trials``); the rest is ``password-trials``."""
    passwords = [f"Pw{i}x{i}Secret" for i in range(8)]
    body = "".join(f"Password: {p}\n" for p in passwords)
    sealed = _ENCRYPTED[suffix]()
    limits = replace(LimitSettings(), password_time=0.5)
    raw = message(body=body, attachments=[(f"f{i}.{suffix}", sealed) for i in range(12)])
    started = time.monotonic()
    parsed = parse_message(raw, limits, unpacker)
    assert time.monotonic() - started < 3.0
    problems = {(p.name, p.location) for p in parsed.problems}
    assert ("password-trials", f"f11.{suffix}") in problems
    assert ("encrypted", "f11." + suffix) not in problems  # untried is not "no candidate fits"
    assert not any(name == "timeout" for name, _ in problems)
