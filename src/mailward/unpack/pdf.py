"""JavaScript, launch actions, automatic actions and embedded files in PDFs, through pikepdf (qpdf).

qpdf resolves object streams and cross-reference damage that keyword
scanners (pdfid) miss. The JavaScript text and every embedded file become
members, so YARA, the hash lists and the name policy see them. Runs in the
sandbox: a crafted PDF can make any parser slow.
"""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import Iterator

import pikepdf

from .meter import CHUNK, Meter, collect
from .model import Allowance, Collector, Fact, Stop, Trials, Unpacked

_ZIP_LOCAL, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"
_RISKY_ACTIONS = ("/JavaScript", "/Launch", "/ImportData", "/SubmitForm")


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    out = Collector()
    meter = Meter(allowance, len(data))
    _polyglot_zip(data, out, meter)
    trials = Trials(allowance)
    try:
        pdf = _open(data, allowance.passwords, out, trials)
    except (pikepdf.PdfError, ValueError, OSError) as exc:
        out.stop(Stop.CORRUPT, f"{type(exc).__name__}: {exc}"[:200])
        return trials.charged(out.result())
    if pdf is None:
        return trials.charged(out.result())
    scripts: list[str] = []
    with pdf:
        for top in pdf.objects:
            for node in _direct_nodes(top):
                _inspect(node, out, meter, scripts)
    if scripts:
        out.observe(Fact.PDF_JAVASCRIPT, f"{len(scripts)} script(s)")
        collect(out, meter, "JavaScript", "\n".join(scripts).encode("utf-8", "replace"), "application/javascript")
    return trials.charged(out.result())


def _polyglot_zip(data: bytes, out: Collector, meter: Meter) -> None:
    """A zip stored raw inside or after the PDF (a polyglot): readers open one half, unzip the other.

    The bytes from the first local header to the end of the last end-of-central-directory record
    become a member, so the zip half is opened and scanned like any attachment.
    """
    start = data.find(_ZIP_LOCAL)
    end = data.rfind(_ZIP_END)
    if start < 0 or end < start or len(data) < end + 22:
        return
    comment = int.from_bytes(data[end + 20 : end + 22], "little")
    out.observe(Fact.POLYGLOT, f"zip at offset {start}")
    collect(out, meter, "polyglot zip", data[start : end + 22 + comment], "application/zip")


def _open(data: bytes, passwords: tuple[str, ...], out: Collector, trials: Trials) -> pikepdf.Pdf | None:
    """The document, with a password candidate if it needs one; None, and why in ``out``, if none opened it.
    Every try parses the whole file again."""
    try:
        return pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError:
        pass
    for password in passwords:
        if trials.exhausted:
            out.incomplete.append(trials.untried("the PDF"))
            return None
        began = time.monotonic()
        try:
            pdf = pikepdf.open(io.BytesIO(data), password=password)
        except pikepdf.PasswordError:
            trials.wrong(began)
            continue
        out.observe(Fact.ENCRYPTED_OPENED, "pdf")
        return pdf
    out.stop(Stop.ENCRYPTED, "PDF needs a password, no candidate fits")
    return None


def _direct_nodes(top: pikepdf.Object) -> Iterator[pikepdf.Object]:
    """The object and every dictionary or stream nested in it directly (indirect ones come on their own)."""
    stack = [top]
    while stack:
        node = stack.pop()
        if isinstance(node, (pikepdf.Dictionary, pikepdf.Stream)):
            yield node
            children = node.values() if isinstance(node, pikepdf.Dictionary) else node.stream_dict.values()
        elif isinstance(node, pikepdf.Array):
            children = list(node)
        else:
            continue
        stack.extend(
            c
            for c in children
            if isinstance(c, (pikepdf.Dictionary, pikepdf.Array, pikepdf.Stream)) and not c.is_indirect
        )


def _inspect(node: pikepdf.Object, out: Collector, meter: Meter, scripts: list[str]) -> None:
    action = str(node.get("/S", ""))
    if action == "/JavaScript" and "/JS" in node:
        code = node.get("/JS")
        scripts.append(_stream_text(code, meter) if isinstance(code, pikepdf.Stream) else str(code))
    elif action == "/Launch":
        out.observe(Fact.PDF_LAUNCH, _launch_target(node))
    for trigger in ("/OpenAction", "/AA"):
        value = node.get(trigger)
        if value is None:
            continue
        if trigger == "/OpenAction":
            actions = [value]
        else:
            actions = list(value.values()) if isinstance(value, pikepdf.Dictionary) else []
        for act in actions:
            if isinstance(act, pikepdf.Dictionary) and str(act.get("/S", "")) in _RISKY_ACTIONS:
                out.observe(Fact.PDF_AUTO_ACTION, f"{trigger} {act.get('/S')}")
    embedded = node.get("/EF")
    if isinstance(embedded, pikepdf.Dictionary):
        label = str(node.get("/UF") or node.get("/F") or "embedded file")
        for stream in embedded.values():
            if isinstance(stream, pikepdf.Stream):
                out.observe(Fact.PDF_EMBEDDED_FILE, label)
                collect(out, meter, label, _stream_bytes(stream, meter))
                break


def _launch_target(node: pikepdf.Object) -> str:
    win = node.get("/Win")
    target = node.get("/F") or (win.get("/F") if win else None) or ""
    if isinstance(target, pikepdf.Dictionary):
        target = target.get("/UF") or target.get("/F") or ""
    return str(target)[:200]


def _stream_text(stream: pikepdf.Stream, meter: Meter) -> str:
    return _stream_bytes(stream, meter).decode("utf-8", "replace")


def _stream_bytes(stream: pikepdf.Stream, meter: Meter) -> bytes:
    """Decode a stream; plain Flate is inflated in bounded steps so a stream bomb stops at the limit."""
    filters = stream.get("/Filter")
    if filters is None:
        return stream.read_raw_bytes()
    if str(filters) == "/FlateDecode" and "/DecodeParms" not in stream:
        return _inflate(stream.read_raw_bytes(), meter)
    return stream.read_bytes()  # other filter chains: qpdf decodes, the sandbox memory limit bounds it


def _inflate(raw: bytes, meter: Meter) -> bytes:
    inflater = zlib.decompressobj()
    out = bytearray()
    pending = raw
    try:
        while pending or not inflater.eof:
            chunk = inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
            if not chunk:
                break
            out += chunk
            if len(out) > meter.remaining:
                break
    except zlib.error:
        pass
    return bytes(out)
