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
import time

import msoffcrypto
import olefile
from oletools import mraptor, msodde, oleobj, rtfobj
from oletools.olevba import VBA_Parser, detect_autoexec, detect_patterns, detect_suspicious

from .lzfu import rtf_body
from .meter import Meter, collect
from .model import Allowance, Collector, Fact, Stop, Trials, Unpacked
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
    trials = Trials(allowance)
    if _decrypt(data, allowance.passwords, out, meter, trials):
        return trials.charged(out.result())
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


def _decrypt(data: bytes, passwords: tuple[str, ...], out: Collector, meter: Meter, trials: Trials) -> bool:
    """True when the document is encrypted (its decrypted form, if any, became a member). Each try
    derives the key anew, as many hash rounds as the document asks for (100,000 by default)."""
    try:
        document = msoffcrypto.OfficeFile(io.BytesIO(data))
        if not document.is_encrypted():
            return False
    except Exception:  # not an Office container msoffcrypto knows (vbaProject.bin, .msi, .msg)
        return False
    for password in dict.fromkeys((*DEFAULT_PASSWORDS, *passwords)):
        if trials.exhausted:
            out.incomplete.append(trials.untried("the encrypted office document"))
            return True
        began = time.monotonic()
        try:
            document = msoffcrypto.OfficeFile(io.BytesIO(data))
            document.load_key(password=password)
            plain = io.BytesIO()
            document.decrypt(plain)
        except Exception:
            trials.wrong(began)
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
        _outlook_item(ole, out, meter)


# An Outlook item (.msg): MAPI properties as streams named by tag, attachments in storages of their own.
_ATTACHMENT = "__ATTACH_VERSION1.0_#"
_EMBEDDED_MESSAGE = "__SUBSTG1.0_3701000D"  # attach method 5: the attached item, a storage of its own
_ATTACH_DATA = "__SUBSTG1.0_37010102"
_ATTACH_NAMES = ("__SUBSTG1.0_3707001F", "__SUBSTG1.0_3707001E", "__SUBSTG1.0_3704001F", "__SUBSTG1.0_3704001E")
_SUBJECT = ("__SUBSTG1.0_0037001F", "__SUBSTG1.0_0037001E")
_BODIES = (
    ("__SUBSTG1.0_10090102", "message body.rtf"),  # PR_RTF_COMPRESSED
    ("__SUBSTG1.0_10130102", "message body.html"),
    ("__SUBSTG1.0_1013001F", "message body.html"),
    ("__SUBSTG1.0_1000001F", "message body.txt"),
    ("__SUBSTG1.0_1000001E", "message body.txt"),
)


def _outlook_item(ole: olefile.OleFileIO[str], out: Collector, meter: Meter) -> None:
    """The bodies and attached files of an Outlook item, and of the items attached to it.

    Members are named by the attachment's long file name (else its short one); files
    in an attached item are named below its subject (``Fwd: invoice/invoice.exe``).
    """
    streams = {tuple(part.upper() for part in entry): entry for entry in ole.listdir()}
    if not any(key[0].startswith(("__SUBSTG1.0_", _ATTACHMENT)) for key in streams):
        return
    # A message storage is the root or an attached item; its attachments are storages one level below.
    attachments: dict[tuple[str, ...], set[tuple[str, ...]]] = {(): set()}
    for key in streams:
        for i, part in enumerate(key[:-1]):
            if part.startswith(_ATTACHMENT):
                attachments.setdefault(key[:i], set()).add(key[: i + 1])
                if key[i + 1] == _EMBEDDED_MESSAGE and i + 2 < len(key):
                    attachments.setdefault(key[: i + 2], set())
    labels: dict[tuple[str, ...], str] = {}
    found: list[tuple[str, tuple[str, ...]]] = []
    bodies: set[str] = set()  # one of each body per item (HTML and text come in two forms)
    for message in sorted(attachments):  # a parent sorts before the items attached to it
        if message and message[-1] != _EMBEDDED_MESSAGE:
            continue  # attachments of storages that are not items: not something Outlook opens
        base = ""
        if message:
            subject = _property(ole, streams, message, _SUBJECT) or f"attached item {len(labels)}"
            base = labels[message] = f"{labels.get(message[:-2], '')}{subject}/"
        for tag, label in _BODIES:
            if message + (tag,) in streams and base + label not in bodies:
                bodies.add(base + label)
                found.append((base + label, message + (tag,)))
        for storage in sorted(attachments[message]):
            if storage + (_ATTACH_DATA,) in streams:
                name = _property(ole, streams, storage, _ATTACH_NAMES) or f"attachment {storage[-1][-8:]}"
                found.append((base + name, storage + (_ATTACH_DATA,)))
    if len(found) > meter.allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(found)} parts in an Outlook item")
        found = found[: meter.allowance.members]
    for label, stream in found:
        value = _read_stream(ole, streams[stream])
        if stream[-1] == _BODIES[0][0]:
            value = rtf_body(value, meter, out)
        if not collect(out, meter, label, value):
            break


def _property(
    ole: olefile.OleFileIO[str],
    streams: dict[tuple[str, ...], list[str]],
    storage: tuple[str, ...],
    keys: tuple[str, ...],
) -> str:
    """The first string property of ``keys`` present in ``storage`` (1F: UTF-16, 1E: 8-bit)."""
    for key in keys:
        entry = streams.get(storage + (key,))
        if entry is not None:
            raw = _read_stream(ole, entry)[:1024]
            text = raw.decode("utf-16-le", "replace") if key.endswith("1F") else raw.decode("latin-1")
            text = text.split("\0", 1)[0].strip()
            if text:
                return text.replace("/", "_")
    return ""


def _read_stream(ole: olefile.OleFileIO[str], entry: list[str]) -> bytes:
    try:
        return bytes(ole.openstream(entry).read())
    except Exception:  # a damaged sector chain: the stream is skipped, the rest is read
        return b""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip("\x00")
    return str(value or "")
