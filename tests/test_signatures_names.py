"""Name and type policy: every name of every object, members of encrypted archives included."""

import pytest

from mailward.config import SignatureSettings
from mailward.envelope import Envelope
from mailward.evidence import Category, Severity
from mailward.message import ContentObject, ParsedMessage
from mailward.signatures.hashes import HashList
from mailward.signatures.names import NameDetector, is_double_extension
from mailward.unpack import Kind, MemberState, Sniffer

BANNED = frozenset(SignatureSettings().banned_extensions)
PE = b"MZ" + b"\0" * 58 + b"\x40\0\0\0" + b"PE\0\0\x4c\x01" + b"\0" * 300


@pytest.fixture(scope="module")
def detector():
    return NameDetector.from_settings(SignatureSettings(), HashList.load([]))


def checks(detector, name, data=b"hello", declared="application/octet-stream", state=MemberState.COMPLETE):
    sniffed = Sniffer().sniff(data) if state is MemberState.COMPLETE else None
    obj = ContentObject(
        name,
        data if sniffed else b"",
        declared,
        names=(name,),
        depth=1,
        sniffed_type=sniffed.mime if sniffed else "",
        kind=sniffed.kind if sniffed else Kind.OTHER,
        state=state,
    )
    evidence = detector.inspect(ParsedMessage(headers=(), objects=(obj,)), Envelope())
    return {f.name: f for f in evidence.findings}


@pytest.mark.parametrize(
    "name, fires",
    [
        ("invoice.pdf.exe", True),
        ("Invoice.PDF.Exe", True),
        ("scan.jpg.scr", True),
        ("invoice.pdf          .exe", True),
        ("archive.zip.001", False),
        ("v1.2.3.tar.gz", False),
        ("photo.2024.jpg", False),
        ("report.final.exe", False),  # "final" is no extension: banned, but not a double extension
        ("setup.1.exe", False),  # a number is a version, not a disguise
        ("invoice.pdf", False),
    ],
)
def test_double_extension(name, fires):
    assert is_double_extension(name, BANNED) is fires


def test_double_extension_finding(detector):
    found = checks(detector, "invoice.pdf.exe", PE)
    assert {"double-extension", "banned-extension", "executable-content"} <= found.keys()
    assert all(f.category is Category.FILETYPE and f.severity is Severity.HIGH for f in found.values())


@pytest.mark.parametrize("name", ["archive.zip.001", "v1.2.3.tar.gz", "photo.2024.jpg", "notes.txt"])
def test_ordinary_names_are_quiet(detector, name):
    assert checks(detector, name) == {}


def test_bidi_override_is_flagged_and_shown_escaped(detector):
    found = checks(detector, "invoice\u202efdp.exe", PE)
    assert found["bidi-override-name"].severity is Severity.HIGH
    assert "<U+202E>" in found["bidi-override-name"].detail
    assert "banned-extension" in found


def test_names_of_encrypted_members_are_checked(detector):
    found = checks(detector, "docs/payment.doc.js", state=MemberState.ENCRYPTED)
    assert {"banned-extension", "double-extension"} <= found.keys()


def test_executable_disguised_as_pdf(detector):
    found = checks(detector, "invoice.pdf", PE, declared="application/pdf")
    assert found["type-mismatch"].severity is Severity.HIGH
    assert found["executable-content"].severity is Severity.HIGH


def test_archive_disguised_as_pdf_is_medium(detector):
    from support.unpack import zipped

    found = checks(detector, "invoice.pdf", zipped({"a.txt": b"x"}))
    assert found["type-mismatch"].severity is Severity.MEDIUM


def test_zip_name_promises_a_zip(detector):
    from support.unpack import rar4_stored, zipped

    assert checks(detector, "photos.zip", PE)["type-mismatch"].severity is Severity.HIGH
    assert checks(detector, "photos.zip", rar4_stored({"a.txt": b"x"}))["type-mismatch"].severity is Severity.MEDIUM
    assert "type-mismatch" not in checks(detector, "photos.zip", zipped({"a.txt": b"x"}))


def test_office_document_sniffed_as_zip_is_no_mismatch(detector):
    from support.unpack import ooxml

    assert "type-mismatch" not in checks(detector, "report.docx", ooxml("docx", {}))


@pytest.mark.parametrize(
    "name, data, severity",
    [
        ("start.lnk", bytes.fromhex("4C0000000114020000000000C000000000000046") + b"\0" * 60, Severity.HIGH),
        ("notes.one", bytes.fromhex("E4525C7B8CD8A74DAEB15378D02996D3") + b"\0" * 60, Severity.MEDIUM),
        ("disk.img", b"\0" * 64, Severity.MEDIUM),
    ],
)
def test_risky_types(detector, name, data, severity):
    assert checks(detector, name, data)["risky-type"].severity is severity


def test_allow_list_exempts_an_object(tmp_path):
    import hashlib

    listing = tmp_path / "allow.txt"
    listing.write_text(f"{hashlib.sha256(PE).hexdigest()};vendor installer\n")
    detector = NameDetector.from_settings(SignatureSettings(), HashList.load([str(listing)]))
    assert checks(detector, "setup.exe", PE) == {}
