"""Active content in OLE documents (.doc/.xls/.ppt, vbaProject.bin) and RTF, through oletools.

Extraction and facts only: the VBA source, XLM formulas and embedded objects
become members (so YARA and the hash lists see them decompressed), and what
mraptor, olevba, msodde and rtfobj report becomes observations. Signatures
decide what weighs how much. Runs in the sandbox: olefile can hang on crafted input.
"""

from __future__ import annotations

import io
import logging
import re

import msoffcrypto
import olefile
from oletools import mraptor, msodde, oleobj, rtfobj
from oletools.olevba import VBA_Parser, detect_autoexec, detect_patterns, detect_suspicious

from .meter import Meter, collect
from .model import Allowance, Collector, Fact, Stop, Unpacked
from .ooxml import XLM_CALL

# Passwords Office opens without asking (Excel's default for "encrypted" workbooks, PowerPoint's
# for read-only presentations): malware uses them so that gateways see only ciphertext.
EXCEL_DEFAULT_PASSWORD = "VelvetSweatshop"
DEFAULT_PASSWORDS = (EXCEL_DEFAULT_PASSWORD, "/01Hannes Ruescher/01")
# olevba's "suspicious" descriptions that mean running, fetching or hiding code, as opposed to
# ordinary file and workbook handling (Open, Kill, SaveAs...), which honest macros do all day.
_DANGEROUS = re.compile(
    r"\b(run|execute|download|inject|shellcode|OLE object|environment|registry|DLL|library|"
    r"keystrokes|obfuscate malicious|disable VBA macro security|Excel 4 Macro|self-modification)",
    re.I,
)
# ...but not the keywords honest auto-exec macros use all the time (Application.Run, window states).
_ORDINARY = frozenset(
    {
        "Run",
        "vbNormal",
        "vbNormalFocus",
        "vbNormalNoFocus",
        "vbMaximizedFocus",
        "vbMinimizedFocus",
        "vbMinimizedNoFocus",
    }
)
_IOC_TYPES = ("URL", "IPv4 address", "Executable file name")
_RTF_TEMPLATE = re.compile(rb"\\\*\\template\s*([^}\s]{1,300})", re.I)
_REMOTE = re.compile(rb"^(https?:|\\\\|//|file:)", re.I)

logging.getLogger("olevba").setLevel(logging.CRITICAL)
logging.getLogger("msodde").setLevel(logging.CRITICAL)


def unpack_ole(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    out = Collector()
    meter = Meter(allowance, len(data))
    if _decrypt(data, allowance.passwords, out, meter):
        return out.result()
    _macros(data, name, out, meter)
    _ole_streams(data, out, meter)
    return out.result()


def unpack_rtf(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    out = Collector()
    meter = Meter(allowance, len(data))
    parser = rtfobj.RtfObjParser(data)
    parser.parse()
    for i, obj in enumerate(parser.objects, 1):
        if obj.is_package:
            label = str(obj.filename or f"package {i}")
            out.observe(Fact.OLE_OBJECT, f"package {label}")
            collect(out, meter, label, obj.olepkgdata or b"")
        elif obj.is_ole:
            class_name = _text(obj.class_name)
            out.observe(Fact.OLE_OBJECT, class_name)
            collect(out, meter, f"object {i} {class_name}".strip(), obj.oledata or b"")
        elif obj.rawdata:
            collect(out, meter, f"object {i}", obj.rawdata)
    for target in _RTF_TEMPLATE.findall(data):
        if _REMOTE.match(target):
            out.observe(Fact.REMOTE_TEMPLATE, target.decode("latin-1"))
    return out.result()


def _decrypt(data: bytes, passwords: tuple[str, ...], out: Collector, meter: Meter) -> bool:
    """True when the document is encrypted (its decrypted form, if any, became a member)."""
    try:
        document = msoffcrypto.OfficeFile(io.BytesIO(data))
        if not document.is_encrypted():
            return False
    except Exception:  # not an Office container msoffcrypto knows (vbaProject.bin, .msi, .msg)
        return False
    for password in dict.fromkeys((*DEFAULT_PASSWORDS, *passwords)):
        try:
            document = msoffcrypto.OfficeFile(io.BytesIO(data))
            document.load_key(password=password)
            plain = io.BytesIO()
            document.decrypt(plain)
        except Exception:
            continue
        out.observe(
            Fact.ENCRYPTED_OPENED,
            "office document, "
            + ("a default password" if password in DEFAULT_PASSWORDS else "a password from the message"),
        )
        collect(out, meter, "decrypted document", plain.getvalue())
        return True
    out.stop(Stop.ENCRYPTED, "encrypted office document, no password candidate fits")
    return True


def _macros(data: bytes, name: str, out: Collector, meter: Meter) -> None:
    try:
        parser = VBA_Parser(name or "document", data=data, relaxed=True)
    except Exception:  # olevba raises its own FileOpenError family on anything it does not know
        return
    try:
        if parser.detect_vba_macros():
            modules = [(stream, code) for _, stream, _, code in parser.extract_macros()]
            source = "\n".join(f"' ---- {stream}\n{_text(code)}" for stream, code in modules)
            out.observe(Fact.VBA_MACROS, f"{len(modules)} module(s)")
            raptor = mraptor.MacroRaptor(source)
            raptor.scan()
            triggers = sorted({k for k, _ in detect_autoexec(source)})
            if raptor.autoexec or triggers:
                out.observe(Fact.VBA_AUTOEXEC, ", ".join(triggers))
                dangerous = sorted(
                    {k for k, why in detect_suspicious(source) if _DANGEROUS.search(why) and k not in _ORDINARY}
                )
                iocs = sorted({v for t, v in detect_patterns(source) if t in _IOC_TYPES})
                if dangerous or iocs:
                    # Runs by itself and reaches out of the document: what droppers do. (mraptor's own
                    # verdict counts Application.Run as execution, so it only adds its flags here.)
                    detail = " ".join(
                        filter(
                            None,
                            [raptor.get_flags(), ", ".join(dangerous), ("IOC " + ", ".join(iocs[:5])) if iocs else ""],
                        )
                    )
                    out.observe(Fact.VBA_SUSPICIOUS, detail[:200])
            collect(out, meter, "VBA source", source.encode("utf-8", "replace"), "text/x-vba")
        if parser.detect_xlm_macros():
            formulas = "\n".join(_text(line) for line in parser.xlm_macros)
            out.observe(Fact.XLM_MACROS, f"{len(parser.xlm_macros)} line(s)")
            calls = sorted({c.decode().upper() for c in XLM_CALL.findall(formulas.encode("utf-8", "replace"))})
            if calls:
                out.observe(Fact.XLM_SUSPICIOUS, ", ".join(calls))
            collect(out, meter, "XLM macros", formulas.encode("utf-8", "replace"), "text/plain")
    finally:
        parser.close()


def _ole_streams(data: bytes, out: Collector, meter: Meter) -> None:
    """DDE fields in Word streams and files embedded as OLE packages (Ole10Native)."""
    if not olefile.isOleFile(data=data):  # positional bytes under 1536 would be opened as a path
        return
    ole: olefile.OleFileIO[str]  # entry names are str (the stub infers bytes from the argument)
    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        try:
            links = msodde.process_doc(ole)
        except Exception:  # msodde assumes Word streams; other OLE files may confuse it
            links = ""
        for link in filter(None, (line.strip() for line in links.splitlines())):
            out.observe(Fact.DDE_LINK, link[:200])
        for entry in ole.listdir():
            if entry[-1] != "\x01Ole10Native":
                continue
            try:
                native = oleobj.OleNativeStream(ole.openstream(entry).read())
            except Exception:
                continue
            label = _text(native.filename) or "/".join(entry)
            out.observe(Fact.OLE_OBJECT, f"package {label}")
            collect(out, meter, label, bytes(native.data or b""))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip("\x00")
    return str(value or "")
