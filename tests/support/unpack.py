"""Builders for hostile and active test material, made at test time from zeros and text.

No binary fixtures are committed: zip bombs, nested archives, a RAR archive, a
TNEF part and an Office VBA project (a compound file with an MS-OVBA
compressed module) are all assembled here byte by byte.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib

import pytest

from support.mail import EICAR


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def nested_zip(levels: int, payload: bytes = EICAR, name: str = "eicar.com") -> bytes:
    data = zipped({name: payload})
    for i in range(levels - 1):
        data = zipped({f"level{levels - 1 - i}.zip": data})
    return data


def overlapping_zip(copies: int = 50) -> bytes:
    """One compressed stream referenced by many central directory entries (the 'better zip bomb')."""
    body = zlib.compress(b"\0" * 100_000)[2:-4]
    name = b"a"
    local = (
        struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, zlib.crc32(b"\0" * 100_000), len(body), 100_000, len(name), 0
        )
        + name
        + body
    )
    central = b""
    for i in range(copies):
        n = f"f{i}".encode()
        central += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                8,
                0,
                0,
                zlib.crc32(b"\0" * 100_000),
                len(body),
                100_000,
                len(n),
                0,
                0,
                0,
                0,
                0,
                0,
            )
            + n
        )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(central), len(local), 0)
    return local + central + end


def aes_zip(members: dict[str, bytes], password: str) -> bytes:
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(password.encode())
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seven_zip(members: dict[str, bytes], password: str | None = None) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password, header_encryption=password is not None) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buf.getvalue()


def iso_image(members: dict[str, bytes]) -> bytes:
    import pycdlib

    image = pycdlib.PyCdlib()
    image.new(joliet=3)
    for i, (name, data) in enumerate(members.items()):
        image.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", joliet_path=f"/{name}")
    out = io.BytesIO()
    image.write_fp(out)
    image.close()
    return out.getvalue()


def rar4_stored(members: dict[str, bytes]) -> bytes:
    """A RAR 4 archive with stored (uncompressed) members, as WinRAR writes with -m0."""

    def block(head_type: int, flags: int, body: bytes, add: bytes = b"") -> bytes:
        head = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + add

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, b"\0" * 6)
    for name, data in members.items():
        raw = name.encode()
        body = (
            struct.pack("<LLBLLBBHL", len(data), len(data), 2, zlib.crc32(data), 0x5A000000, 20, 0x30, len(raw), 0x20)
            + raw
        )
        out += block(0x74, 0x8000, body, data)
    return out + block(0x7B, 0x4000, b"")


def rar4_encrypted(members: dict[str, bytes], password: str) -> bytes:
    """A RAR 4 archive whose stored members carry the password flag and a salt, with data AES-encrypted
    under ``password`` as RAR 3 derives keys. unar finds its checksums wrong even with ``password`` (some
    detail of WinRAR's own encryption differs), so here every password is a wrong one: each try starts
    unar and derives a key, as with a real archive and a wrong candidate."""
    import os

    import rarfile
    from Cryptodome.Cipher import AES

    def block(head_type: int, flags: int, body: bytes, add: bytes = b"") -> bytes:
        head = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + add

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, b"\0" * 6)
    for name, data in members.items():
        raw, salt = name.encode(), os.urandom(8)
        key, iv = rarfile.rar3_s2k(password, salt)
        sealed = AES.new(key, AES.MODE_CBC, iv).encrypt(data + b"\0" * (-len(data) % 16))
        header = struct.pack(
            "<LLBLLBBHL", len(sealed), len(data), 2, zlib.crc32(data), 0x5A000000, 29, 0x30, len(raw), 0x20
        )
        out += block(0x74, 0x8000 | 0x04 | 0x400, header + raw + salt, sealed)  # long block, password, salt
    return out + block(0x7B, 0x4000, b"")


def encrypted_office(password: str) -> bytes:
    """A Word document encrypted (agile, 100,000 hash rounds a key) under ``password``."""
    from msoffcrypto.format.ooxml import OOXMLFile

    sealed = io.BytesIO()
    OOXMLFile(io.BytesIO(ooxml("docx", {}))).encrypt(password, sealed)
    return sealed.getvalue()


def encrypted_pdf(password: str) -> bytes:
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page()
    sealed = io.BytesIO()
    pdf.save(sealed, encryption=pikepdf.Encryption(owner=password + "-owner", user=password, R=6))
    return sealed.getvalue()


def tnef(attachments: dict[str, bytes], rtf_body: bytes | None = None) -> bytes:
    """A winmail.dat with one attribute run per attachment (rendering data, title, data), and
    ``rtf_body`` as the message's PR_RTF_COMPRESSED property when given (already compressed)."""

    def attribute(level: int, name: int, kind: int, data: bytes) -> bytes:
        return struct.pack("<BHHL", level, name, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)

    out = struct.pack("<LH", 0x223E9F78, 0x0101)
    out += attribute(1, 0x9006, 0x0006, struct.pack("<L", 0x00010000))  # TNEF version
    for name, data in attachments.items():
        out += attribute(2, 0x9002, 0x0006, b"\0" * 14)  # starts an attachment
        out += attribute(2, 0x8010, 0x0001, name.encode() + b"\0")  # title
        out += attribute(2, 0x800F, 0x0006, data)  # data
    if rtf_body is not None:  # attMsgProps: one PT_BINARY property, PR_RTF_COMPRESSED (0x1009)
        value = struct.pack("<I", len(rtf_body)) + rtf_body + b"\0" * (-len(rtf_body) % 4)
        out += attribute(1, 0x9003, 0x0006, struct.pack("<IHHI", 1, 0x0102, 0x1009, 1) + value)
    return out


_RTF_PREBUFFER = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern \\fscript "
    b"\\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0\\blue0\r\n\\par "
    b"\\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)


def compressed_rtf(rtf: bytes) -> bytes:
    """MS-OXRTFCP "LZFu" compressed RTF: one back reference into the prebuffer, literals, the end marker."""
    tokens: list[bytes | None] = []  # bytes: a literal; None: a reference; the last reference ends the stream
    start = rtf[:6]
    reference = _RTF_PREBUFFER.find(start)
    rest = rtf
    if reference >= 0 and len(start) == 6:  # "{\rtf1" is in the prebuffer: copy it from there
        tokens.append(struct.pack(">H", reference << 4 | (6 - 2)))
        rest = rtf[6:]
    out = bytearray()
    kinds = [True] * len(tokens) + [False] * len(rest) + [True]
    end = (len(_RTF_PREBUFFER) + len(rtf)) % 4096
    values = tokens + [bytes([b]) for b in rest] + [struct.pack(">H", end << 4)]
    for group in range(0, len(values), 8):
        flags = sum(1 << i for i, is_ref in enumerate(kinds[group : group + 8]) if is_ref)
        out.append(flags)
        for value in values[group : group + 8]:
            out += value
    body = struct.pack("<II", 0x75465A4C, 0) + bytes(out)
    return struct.pack("<II", len(body) + 4, len(rtf)) + body


def rtf_package(filename: str, payload: bytes) -> bytes:
    """An RTF document embedding ``payload`` as an OLE package named ``filename``."""
    import binascii

    klass = b"Package\0"
    native = ole10_native(filename, payload)
    ole1 = struct.pack("<III", 0x00000501, 2, len(klass)) + klass + struct.pack("<III", 0, 0, len(native)) + native
    return (
        b"{\\rtf1\\ansi Please open the attached file.\\par{\\object\\objemb{\\*\\objclass Package}"
        b"{\\*\\objdata " + binascii.hexlify(ole1) + b"}}}"
    )


def compound(tree: dict[str, object]) -> bytes:
    """A compound file from nested ``{name: bytes | {name: ...}}`` (dicts are storages); streams
    are padded to 4200 bytes (no mini stream), so string properties end at their first NUL."""
    NONE = 0xFFFFFFFF
    entries: list[list[object]] = [["Root Entry", 5, b"", NONE, NONE, NONE]]

    def add(children: dict[str, object], parent: int) -> None:
        previous = None
        for name, node in children.items():
            index = len(entries)
            if isinstance(node, dict):
                entries.append([name, 1, b"", NONE, NONE, NONE])
                add(node, index)
            else:
                assert isinstance(node, bytes)
                entries.append([name, 2, node.ljust(4200, b"\0"), NONE, NONE, NONE])
            if previous is None:
                entries[parent][5] = index
            else:
                entries[previous][4] = index
            previous = index

    add(tree, 0)
    return _compound_file([tuple(e) for e in entries])  # type: ignore[misc]


def outlook_item(attachments: dict[str, bytes | dict[str, object]], subject: str = "Fwd") -> dict[str, object]:
    """The storage tree of an Outlook item (.msg): a file attachment per ``bytes``, an attached
    item (attach method 5) per dict made by this function. ``compound()`` turns it into a file."""
    tree: dict[str, object] = {"__substg1.0_0037001F": subject.encode("utf-16-le")}
    for i, (name, value) in enumerate(attachments.items()):
        storage: dict[str, object] = {"__substg1.0_3707001F": name.encode("utf-16-le")}
        if isinstance(value, dict):
            storage["__substg1.0_3701000D"] = value
        else:
            storage["__substg1.0_37010102"] = value
        tree[f"__attach_version1.0_#{i:08X}"] = storage
    return tree


def uuencoded(name: str, data: bytes) -> bytes:
    import binascii

    lines = [f"begin 644 {name}".encode()]
    lines += [binascii.b2a_uu(data[i : i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
    return b"\n".join(lines + [b"`", b"end", b""])


def yencoded(name: str, data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        shifted = (byte + 42) % 256
        out += b"=" + bytes([(shifted + 64) % 256]) if shifted in (0, 10, 13, 61) else bytes([shifted])
    lines = [bytes(out[i : i + 128]) for i in range(0, len(out), 128)]
    head = f"=ybegin line=128 size={len(data)} name={name}".encode()
    return b"\n".join([head, *lines, f"=yend size={len(data)}".encode(), b""])


def binhexed(name: str, data: bytes) -> bytes:
    """BinHex 4.0 (data fork only), with a run of zeros run-length encoded."""

    def crc16(data: bytes) -> int:
        crc = 0
        for byte in data + b"\0\0":
            crc ^= byte << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        return crc

    header = bytes([len(name)]) + name.encode() + b"\0APPL????\0\0" + struct.pack(">II", len(data), 0)
    stream = header + struct.pack(">H", crc16(header)) + data + struct.pack(">HH", crc16(data), crc16(b""))
    stream = stream.replace(b"\x90", b"\x90\x00").replace(b"\0" * 20, b"\0\x90\x14")
    alphabet = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
    bits = "".join(f"{b:08b}" for b in stream)
    bits += "0" * (-len(bits) % 6)
    text = b":" + bytes(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6)) + b":"
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"(This file must be converted with BinHex 4.0)\n" + b"\n".join(lines) + b"\n"


# ---- Office: a VBA project in a compound file ------------------------------------------------


def _ovba_compress(data: bytes) -> bytes:
    """MS-OVBA compression with literal tokens only (valid, just not smaller)."""
    out = bytearray(b"\x01")
    step = 3640  # 455 token groups of 9 bytes fit one 4098-byte chunk
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        body = bytearray()
        for i in range(0, len(chunk), 8):
            body += b"\0" + chunk[i : i + 8]
        out += struct.pack("<H", 0xB000 | (len(body) + 2 - 3)) + body
    return bytes(out)


def _record(record_id: int, data: bytes) -> bytes:
    return struct.pack("<HL", record_id, len(data)) + data


def _dir_stream(module: str) -> bytes:
    name = module.encode()
    uname = module.encode("utf-16-le")
    info = (
        _record(0x01, struct.pack("<L", 1))
        + _record(0x02, struct.pack("<L", 0x409))
        + _record(0x14, struct.pack("<L", 0x409))
        + _record(0x03, struct.pack("<H", 1252))
        + _record(0x04, b"VBAProject")
        + _record(0x05, b"")
        + _record(0x40, b"")
        + _record(0x06, b"")
        + _record(0x3D, b"")
        + _record(0x07, struct.pack("<L", 0))
        + _record(0x08, struct.pack("<L", 0))
        + struct.pack("<HLLH", 0x09, 4, 1, 0)
        + _record(0x0C, b"")
        + _record(0x3C, b"")
    )
    modules = (
        _record(0x0F, struct.pack("<H", 1))
        + _record(0x13, struct.pack("<H", 0xFFFF))
        + _record(0x19, name)
        + _record(0x47, uname)
        + _record(0x1A, name)
        + _record(0x32, uname)
        + _record(0x1C, b"")
        + _record(0x48, b"")
        + _record(0x31, struct.pack("<L", 0))
        + _record(0x1E, struct.pack("<L", 0))
        + _record(0x2C, struct.pack("<H", 0xFFFF))
        + _record(0x21, b"")
        + _record(0x2B, b"")
    )
    plain = info + modules + _record(0x10, b"")
    return _ovba_compress(plain + b"\0" * (4200 - len(plain)))  # streams >= 4096 bytes need no mini stream


def _compound_file(entries: list[tuple[str, int, bytes, int, int, int]]) -> bytes:
    """(name, type, data, left, right, child) entries -> a version 3 compound file, regular sectors only."""
    sector = 512
    streams = [e[2] for e in entries]
    data_sectors = [(len(s) + sector - 1) // sector for s in streams]
    dir_sectors = (len(entries) * 128 + sector - 1) // sector
    total = dir_sectors + sum(data_sectors)
    fat_sectors = 1
    while (fat_sectors + total) > fat_sectors * (sector // 4):
        fat_sectors += 1
    fat = [0xFFFFFFFD] * fat_sectors
    dir_start = len(fat)
    fat += [len(fat) + i + 1 for i in range(dir_sectors - 1)] + [0xFFFFFFFE]
    starts = []
    for n in data_sectors:
        starts.append(len(fat) if n else 0xFFFFFFFE)
        fat += [len(fat) + i + 1 for i in range(n - 1)] + ([0xFFFFFFFE] if n else [])
    fat += [0xFFFFFFFF] * (fat_sectors * (sector // 4) - len(fat))
    directory = b""
    for (name, kind, data, left, right, child), start in zip(entries, starts):
        raw = name.encode("utf-16-le") + b"\0\0"
        directory += (
            raw.ljust(64, b"\0")
            + struct.pack("<HBB3L", len(raw), kind, 1, left, right, child)
            + b"\0" * 36
            + struct.pack("<LLL", start if data else 0xFFFFFFFE, len(data), 0)
        )
    directory = directory.ljust(dir_sectors * sector, b"\0")
    difat = list(range(fat_sectors)) + [0xFFFFFFFF] * (109 - fat_sectors)
    header = (
        bytes.fromhex("D0CF11E0A1B11AE1")
        + b"\0" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + b"\0" * 6
        + struct.pack("<9L", 0, fat_sectors, dir_start, 0, 4096, 0xFFFFFFFE, 0, 0xFFFFFFFE, 0)
        + struct.pack("<109L", *difat)
    )
    body = struct.pack(f"<{len(fat)}L", *fat) + directory
    for data, n in zip(streams, data_sectors):
        body += data.ljust(n * sector, b"\0")
    return header + body


def vba_project(source: str, module: str = "Module1") -> bytes:
    """A vbaProject.bin holding one standard module with ``source``."""
    code = (source.replace("\n", "\r\n") + "\r\n").encode("latin-1")
    code += b"' padding\r\n" * ((4200 - len(code)) // 11 + 1)
    project = (
        f'ID="{{00000000-0000-0000-0000-000000000000}}"\r\nModule={module}\r\nName="VBAProject"\r\n'
        f'HelpContextID="0"\r\nVersionCompatible32="393222000"\r\n\r\n[Workspace]\r\n'
        f"{module}=0, 0, 0, 0, C\r\n"
    ).encode()
    project += b"\r\n" * ((4200 - len(project)) // 2)
    NONE = 0xFFFFFFFF
    return _compound_file(
        [
            ("Root Entry", 5, b"", NONE, NONE, 1),
            ("VBA", 1, b"", NONE, 2, 3),
            ("PROJECT", 2, project, NONE, NONE, NONE),
            ("_VBA_PROJECT", 2, struct.pack("<HHBH", 0x61CC, 0xFFFF, 0, 0) + b"\0" * 4200, NONE, 4, NONE),
            ("dir", 2, _dir_stream(module), NONE, 5, NONE),
            (module, 2, _ovba_compress(code), NONE, NONE, NONE),
        ]
    )


def ooxml(kind: str, parts: dict[str, bytes]) -> bytes:
    """A minimal Word ("docm"/"docx") or Excel ("xlsm") package with extra ``parts``."""
    main = {"docm": "word/document.xml", "docx": "word/document.xml", "xlsm": "xl/workbook.xml"}[kind]
    content_types = (
        b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Default Extension="xml" ContentType="application/xml"/></Types>'
    )
    members = {"[Content_Types].xml": content_types, main: parts.pop(main, b"<document/>")}
    members.update(parts)
    return zipped(members)


def settings_for(state_dir, **signatures):
    """Default settings with a private state directory and optional [signatures] overrides."""
    from dataclasses import replace

    from mailward.config import Settings, SignatureSettings

    return replace(Settings(), state_dir=str(state_dir), signatures=replace(SignatureSettings(), **signatures))


class Scanner:
    """parse_message plus every signature detector, as the pipeline runs them."""

    def __init__(self, settings, unpacker):
        from mailward import signatures

        self.settings = settings
        self.unpacker = unpacker
        self.detectors = signatures.detectors(settings)

    def __call__(self, raw: bytes):
        from mailward.envelope import Envelope
        from mailward.evidence import Evidence
        from mailward.message import parse_message

        parsed = parse_message(raw, self.settings.limits, self.unpacker)
        evidence = Evidence(findings=parsed.problems)
        for detector in self.detectors:
            evidence = evidence.merged(detector.inspect(parsed, Envelope()))
        return parsed, evidence


def names_at(evidence, location: str | None = None) -> set[str]:
    return {f.name for f in evidence.findings if location is None or f.location == location}


# Fixtures registered for every module by tests/conftest.py.
@pytest.fixture(scope="session")
def unpacker():
    """One Unpacker (and its parser sandbox, restarted by itself after a crash) for the session."""
    from mailward.config import LimitSettings
    from mailward.unpack import Unpacker

    with Unpacker(LimitSettings()) as shared:
        yield shared


@pytest.fixture
def scan(tmp_path, unpacker):
    return Scanner(settings_for(tmp_path), unpacker)


def ole10_native(filename: str, payload: bytes) -> bytes:
    """An OLE package's native data (what Packager writes): ``payload`` under ``filename``."""
    name = filename.encode()
    return (
        struct.pack("<H", 2)
        + name
        + b"\0C:\\"
        + name
        + b"\0"
        + struct.pack("<HH", 0, 3)
        + b"C:\\tmp\\"
        + name
        + b"\0"
        + struct.pack("<L", len(payload))
        + payload
    )


def ole_package(filename: str, payload: bytes) -> bytes:
    """A compound file holding one OLE package (an Ole10Native stream) that embeds ``payload``."""
    native = ole10_native(filename, payload)
    stream = (struct.pack("<L", len(native)) + native).ljust(4200, b"\0")  # no mini stream
    NONE = 0xFFFFFFFF
    return _compound_file([("Root Entry", 5, b"", NONE, NONE, 1), ("\x01Ole10Native", 2, stream, NONE, NONE, NONE)])
