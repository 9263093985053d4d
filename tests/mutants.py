"""Mutants of real mail for fuzzing the parser and the detectors, made at run time.

Each mutation is what a careless or hostile sender does to a message: flipped
bytes, mangled header values and encoded words, broken or lying MIME
boundaries, charsets Python knows but no mail means (``idna``, ``undefined``),
swapped transfer encodings, truncation, and nesting (in message/rfc822 parts
and in archives). Deterministic for a given seed, so a failure can be replayed.
Used by the tests (a few hundred mutants) and by ``bench/fuzz_pool.py`` (tens of
thousands); nothing here is committed as a file.
"""

from __future__ import annotations

import base64
import io
import random
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mailward.envelope import Envelope
from support.mail import EICAR

# Who sends every mutant: a client address, HELO and sender, so SPF and the block lists have work to do.
SENDER = Envelope(mail_from="anna@example.org", client_address="192.0.2.7", helo="mx.example.org")

# Charsets that are valid Python codecs but not mail charsets, unknown ones, and odd but real ones.
HOSTILE_CHARSETS = (
    b"undefined",
    b"idna",
    b"punycode",
    b"unicode_escape",
    b"utf\xc3\xa98",
    b"x-unknown",
    b"hex",
    b"base64",
    b"rot13",
    b"utf-7",
    b"utf-16",
    b"utf-32-be",
    b"",
    b'"',
    b"us-ascii",
    b"iso-2022-jp",
    b"gb18030",
    b"cp1252",
    b"utf-8",
    b"=?",
    b"ks_c_5601-1987",
)
ENCODINGS = (
    b"base64",
    b"quoted-printable",
    b"7bit",
    b"8bit",
    b"binary",
    b"x-uuencode",
    b"uuencode",
    b"bogus",
    b"base64; x",
    b"",
)
ENCODED_WORDS = (
    b"=?utf\xc3\xa98?Q?hello?=",
    b"=?idna?Q?caf=E9?=",
    b"=?undefined?B?6Q==?=",
    b"=?utf-8?B?***?=",
    b"=?utf-8?Q?=E2=80=AEexe.txt?=",
    b"=?x?q?\x1b[2J?=",
    b"=?utf-8?q?a=0D=0Ab?=",
    b"=?=?=?",
    b"=?iso-8859-1*en?q?x?=",
    b"=?utf-8?b?" + base64.b64encode(b"\xff\xfe\xfd") + b"?=",
    b"\xe9\xff raw 8-bit \x1b[31m\xe2\x80\xae",
    b"=?utf-7?Q?+AGEAYgBj-?=",
)
TEXT_NOISE = (
    b"\x00",
    b"\x1b[2J",
    b"\x07",
    b"\r",
    b"\xe2\x80\xae",
    b"\xff\xfe",
    b"=\r\n",
    b"=?",
    b"begin 644 x\n",
    b'<a href="data:a/b;base64,AAAA">',
    b"\n\n",
    b"--",
    b"\\",
)

_HEADER = re.compile(rb"^([!-9;-~]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.M)
_BOUNDARY = re.compile(rb"boundary=\"?([^\";\r\n]+)\"?", re.I)
_CHARSET = re.compile(rb"charset=\"?([^\";\s]*)\"?", re.I)
_ENCODING = re.compile(rb"^(Content-Transfer-Encoding:[ \t]*)(\S*)", re.I | re.M)


def seeds_from(paths: list[Path], limit: int | None = None) -> list[bytes]:
    """Message bytes from files and directories (recursively, sorted; at most ``limit``)."""
    found: list[bytes] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if limit is not None and len(found) >= limit:
                return found
            found.append(file.read_bytes())
    return found


def mutants(seeds: list[bytes], count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` (description, bytes) mutants: one to three mutations of a seed each."""
    rng = random.Random(seed)
    for n in range(count):
        raw = rng.choice(seeds)
        names = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            name, mutate = rng.choice(MUTATIONS)
            raw = mutate(raw, rng)
            names.append(name)
        yield f"#{n} {'+'.join(names)}", raw


def flip_bytes(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 16)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def insert_noise(raw: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(raw) + 1)
    return raw[:at] + rng.choice(TEXT_NOISE) * rng.choice((1, 1, 3, 50)) + raw[at:]


def mangle_header(raw: bytes, rng: random.Random) -> bytes:
    """A header value replaced by (or extended with) an encoded word in a broken charset, or 8-bit junk."""
    fields = list(_HEADER.finditer(raw[:65536]))
    if not fields:
        return rng.choice(ENCODED_WORDS) + b"\n" + raw
    field = rng.choice(fields)
    value = rng.choice(ENCODED_WORDS)
    if rng.random() < 0.5:
        value = field.group(2) + b" " + value
    return raw[: field.start(2)] + value + raw[field.end(2) :]


def add_header(raw: bytes, rng: random.Random) -> bytes:
    name = rng.choice(
        (
            b"Subject",
            b"From",
            b"To",
            b"Content-Type",
            b"Content-Disposition",
            b"X-Mailward-Release",
            b"Authentication-Results",
            b"DKIM-Signature",
            b"Received",
            b"Reply-To",
        )
    )
    value = rng.choice(
        ENCODED_WORDS
        + (
            b"multipart/mixed; boundary=",
            b"attachment; filename*=idna''%E9%FF",
            b'text/plain; charset="undefined"',
            b"<@>",
            b'"" <' + b"a" * 300 + b"@>",
        )
    )
    return name + b": " + value + b"\n" + raw


def swap_charset(raw: bytes, rng: random.Random) -> bytes:
    found = list(_CHARSET.finditer(raw))
    charset = rng.choice(HOSTILE_CHARSETS)
    if not found:
        return re.sub(rb"(?i)(content-type:[ \t]*text/[a-z]+)", rb"\1; charset=" + charset, raw, count=1)
    match = rng.choice(found)
    return raw[: match.start(1)] + charset + raw[match.end(1) :]


def swap_encoding(raw: bytes, rng: random.Random) -> bytes:
    found = list(_ENCODING.finditer(raw))
    if not found:
        return re.sub(
            rb"(?i)(\ncontent-type:)", b"\nContent-Transfer-Encoding: " + rng.choice(ENCODINGS) + rb"\1", raw, count=1
        )
    match = rng.choice(found)
    return raw[: match.start(2)] + rng.choice(ENCODINGS) + raw[match.end(2) :]


def mangle_boundary(raw: bytes, rng: random.Random) -> bytes:
    """A boundary declared differently from its delimiters, a delimiter cut, repeated or left unclosed."""
    found = _BOUNDARY.search(raw)
    if not found:
        return raw.replace(b"\n\n", b'\nContent-Type: multipart/mixed; boundary="x"\n\n--x\n', 1)
    boundary = found.group(1)
    choice = rng.randrange(5)
    if choice == 0:
        return raw[: found.start(1)] + boundary[:-1] + raw[found.end(1) :]
    if choice == 1:
        return raw.replace(b"--" + boundary + b"--", b"", 1)
    if choice == 2:
        at = raw.find(b"--" + boundary, found.end())
        return raw if at < 0 else raw[:at] + (b"--" + boundary + b"\n") * rng.choice((2, 50)) + raw[at:]
    if choice == 3:
        return raw.replace(
            b"--" + boundary, b"--" + boundary + b"\nContent-Type: multipart/mixed; boundary=" + boundary + b"\n", 1
        )
    return raw[: found.start(1)] + b"" + raw[found.end(1) :]


def truncate(raw: bytes, rng: random.Random) -> bytes:
    return raw[: rng.randrange(len(raw) + 1)]


def nest_message(raw: bytes, rng: random.Random) -> bytes:
    """The message as a message/rfc822 attachment, one or more levels deep."""
    for _ in range(rng.choice((1, 1, 3, 12))):
        raw = (
            b"From: a@example.org\nSubject: fwd\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="nest"\n\n--nest\nContent-Type: text/plain\n\nsee below\n'
            b"--nest\nContent-Type: message/rfc822\n\n" + raw + b"\n--nest--\n"
        )
    return raw


def attach_archive(raw: bytes, rng: random.Random) -> bytes:
    """The message (or an EICAR) zipped, possibly inside another zip, as a base64 attachment."""
    payload, name = (raw, "mail.eml") if rng.random() < 0.7 else (EICAR, "eicar.com")
    for _ in range(rng.choice((1, 1, 2))):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, payload)
        payload, name = buf.getvalue(), "inner.zip"
    encoded = base64.encodebytes(payload)
    if rng.random() < 0.3:  # a corrupt archive or broken base64
        encoded = flip_bytes(encoded, rng)
    return (
        b"From: b@example.org\nSubject: archive\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="arch"\n\n--arch\nContent-Type: text/plain; charset='
        + rng.choice(HOSTILE_CHARSETS)
        + b'\n\nh\xe9llo \xff\n--arch\nContent-Type: application/zip; name="'
        + rng.choice(ENCODED_WORDS).replace(b'"', b"")
        + b'.zip"\nContent-Transfer-Encoding: base64\n\n'
        + encoded
        + b"--arch--\n"
    )


MUTATIONS: tuple[tuple[str, Callable[[bytes, random.Random], bytes]], ...] = (
    ("flip", flip_bytes),
    ("noise", insert_noise),
    ("header", mangle_header),
    ("add-header", add_header),
    ("charset", swap_charset),
    ("encoding", swap_encoding),
    ("boundary", mangle_boundary),
    ("truncate", truncate),
    ("nest", nest_message),
    ("archive", attach_archive),
)
