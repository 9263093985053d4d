"""Content-inspection throughput on a realistic mix, with the shipped rules and thousands of rules.

    python bench/scan_throughput.py [--corpus DIR] [--messages 400] [--rules 5000]

Builds a mix of mail (bodies from an .eml corpus if given, else generated
text) with the attachments ordinary mail carries: PDFs, Word and Excel files,
zipped documents, images, HTML, a few macro documents. Scans it in this one
process with three set-ups measured in the same run:

* baseline: the stdlib MIME parse and walk only (the least any filter does);
* inspect + shipped rules: the object tree (unpacking, sniffing, sandboxed
  document parsers) and every signature detector with Mailward's rules;
* inspect + N rules: the same plus N generated rules shaped like public ones.

Prints messages/s, MB/s of mail, p50/p99 per message and the ratio to the
baseline, then scans hostile messages (bombs, deep nesting, many members,
overlapping entries, a slow-parsing PDF) to show the cost per message stays
bounded by the limits whatever the input. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import io
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mailward import signatures  # noqa: E402
from mailward.config import Settings, SignatureSettings  # noqa: E402
from mailward.envelope import Envelope  # noqa: E402
from mailward.message import parse_message  # noqa: E402
from mailward.unpack import Unpacker  # noqa: E402
from support.mail import mime_mail as message
from support.unpack import nested_zip, ooxml, overlapping_zip, vba_project, zipped  # noqa: E402

WORDS = [
    "the",
    "report",
    "quarterly",
    "meeting",
    "invoice",
    "please",
    "find",
    "attached",
    "regards",
    "project",
    "budget",
    "review",
    "schedule",
    "customer",
    "order",
    "delivery",
    "update",
    "team",
    "thanks",
    "question",
    "contract",
    "draft",
    "final",
    "numbers",
]


def text(rng: random.Random, words: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(words // 12)) + "\n"


def pdf(rng: random.Random, pages: int) -> bytes:
    import pikepdf

    doc = pikepdf.new()
    for _ in range(pages):
        doc.add_blank_page()
        page = doc.pages[-1]
        lines = " ".join(f"({rng.choice(WORDS)}) Tj" for _ in range(400))
        page.Contents = doc.make_stream(f"BT /F1 10 Tf 50 700 Td {lines} ET".encode())
    out = io.BytesIO()
    doc.save(out, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    return out.getvalue()


def docx(rng: random.Random) -> bytes:
    body = "".join(f"<w:p><w:r><w:t>{text(rng, 60)}</w:t></w:r></w:p>" for _ in range(40)).encode()
    return ooxml(
        "docx",
        {
            "word/document.xml": b"<w:document><w:body>" + body + b"</w:body></w:document>",
            "word/styles.xml": b"<w:styles/>" * 200,
            "docProps/core.xml": b"<cp/>",
        },
    )


def xlsx(rng: random.Random) -> bytes:
    rows = "".join(
        f'<row r="{i}"><c><v>{rng.random()}</v></c><c><v>{rng.random()}</v></c></row>' for i in range(3000)
    ).encode()
    return ooxml("xlsm", {"xl/worksheets/sheet1.xml": b"<worksheet><sheetData>" + rows + b"</sheetData></worksheet>"})


def image(rng: random.Random, size: int) -> bytes:
    return b"\xff\xd8\xff\xe0\0\x10JFIF\0" + rng.randbytes(size)


def realistic_mix(count: int, corpus: list[bytes], rng: random.Random) -> list[bytes]:
    pdfs = [pdf(rng, rng.randint(1, 8)) for _ in range(6)]
    docs = [docx(rng) for _ in range(4)]
    sheets = [xlsx(rng) for _ in range(3)]
    macro = ooxml(
        "docm", {"word/vbaProject.bin": vba_project("Sub FormatTable()\n  Selection.Font.Bold = True\nEnd Sub\n")}
    )
    out = []
    for i in range(count):
        roll = rng.random()
        body = corpus[i % len(corpus)] if corpus else None
        if roll < 0.55:
            out.append(body if body is not None else message(body=text(rng, 300)))
            continue
        attachments = []
        if roll < 0.75:
            attachments.append(("report.pdf", rng.choice(pdfs)))
        elif roll < 0.83:
            attachments.append(("letter.docx", rng.choice(docs)))
        elif roll < 0.87:
            attachments.append(("figures.xlsx", rng.choice(sheets)))
        elif roll < 0.92:
            attachments.append(("documents.zip", zipped({"a.pdf": rng.choice(pdfs), "b.docx": rng.choice(docs)})))
        elif roll < 0.98:
            attachments += [
                (f"IMG_{n}.jpg", image(rng, rng.randint(50_000, 400_000))) for n in range(rng.randint(1, 3))
            ]
        else:
            attachments.append(("table.docm", macro))
        out.append(
            message(
                body=text(rng, 150), attachments=attachments, html=f"<html><body><p>{text(rng, 100)}</p></body></html>"
            )
        )
    return out


def hostile_mix() -> list[tuple[str, bytes]]:
    MiB = 1024 * 1024
    import gzip

    from support.unpack import aes_zip, tar_gz

    deep_mime = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(3000))
    return [
        ("zip ratio bomb (1 GiB of zeros)", message(attachments=[("bomb.zip", zipped({"z": b"\0" * (1024 * MiB)}))])),
        ("gzip bomb (512 MiB)", message(attachments=[("z.gz", gzip.compress(b"\0" * (512 * MiB), 9))])),
        (
            "tar.gz of 20 x 64 MiB zeros",
            message(attachments=[("t.tgz", tar_gz({f"f{i}": b"\0" * (64 * MiB) for i in range(20)}))]),
        ),
        ("zip nested 12 deep", message(attachments=[("deep.zip", nested_zip(12))])),
        (
            "zip with 5,000 members",
            message(attachments=[("many.zip", zipped({f"f{i}": b"x" for i in range(5000)}, 0))]),
        ),
        ("overlapping entries", message(attachments=[("o.zip", overlapping_zip(2000))])),
        ("AES zip, no password", message(attachments=[("s.zip", aes_zip({"a.exe": b"MZ" * 1000}, "pw"))])),
        ("3,000 nested multiparts", ("From: a@b\nSubject: x\n" + deep_mime + "\nx\n").encode()),
        ("PDF with 300,000 objects", message(attachments=[("slow.pdf", _slow_pdf())])),
    ]


def _slow_pdf() -> bytes:
    import pikepdf

    doc = pikepdf.new()
    doc.add_blank_page()
    doc.Root.Junk = pikepdf.Array([doc.make_indirect(pikepdf.Dictionary(N=i)) for i in range(300_000)])
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def synthetic_rules(directory: Path, count: int, rng: random.Random) -> None:
    """Rules shaped like public ones: a few literal strings (some nocase/wide/hex), any/2 of them."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
    per_file = 100
    for f in range(0, count, per_file):
        rules = []
        for r in range(f, min(f + per_file, count)):
            strings = []
            for s in range(rng.randint(2, 5)):
                kind = rng.random()
                if kind < 0.15:
                    hex_bytes = " ".join(f"{rng.randrange(256):02X}" for _ in range(rng.randint(6, 16)))
                    strings.append(f"$s{s} = {{ {hex_bytes} }}")
                else:
                    lit = "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 24)))
                    mods = rng.choice(["", " nocase", " wide ascii", " ascii"])
                    strings.append(f'$s{s} = "{lit}"{mods}')
            cond = rng.choice(
                ["any of them", "2 of them", "all of them and filesize < 5MB", 'any of them and extension == "exe"']
            )
            rules.append(
                f'rule Synthetic_{r} {{\n  meta:\n    description = "generated"\n  strings:\n    '
                + "\n    ".join(strings)
                + f"\n  condition:\n    {cond}\n}}\n"
            )
        (directory / f"set{f // per_file:03d}.yar").write_text("\n".join(rules))


def baseline(raw: bytes) -> None:
    root = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in root.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def run(name: str, messages: list[bytes], scan) -> dict:
    times = []
    started = time.perf_counter()
    for raw in messages:
        t0 = time.perf_counter()
        scan(raw)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    size = sum(len(m) for m in messages)
    times.sort()
    return {
        "name": name,
        "total": total,
        "msg_s": len(messages) / total,
        "mb_s": size / total / 1e6,
        "p50": statistics.median(times) * 1000,
        "p99": times[int(0.99 * (len(times) - 1))] * 1000,
        "max": times[-1] * 1000,
    }


def inspector(settings: Settings, unpacker: Unpacker):
    detectors = signatures.detectors(settings)
    envelope = Envelope()

    def scan(raw: bytes):
        parsed = parse_message(raw, settings.limits, unpacker)
        return parsed.problems + sum((d.inspect(parsed, envelope).findings for d in detectors), ())

    return scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="directory of .eml-like files for the text-only share")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rules", type=int, default=5000, help="synthetic rules for the large rule set")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    corpus = [p.read_bytes() for p in sorted(args.corpus.rglob("*")) if p.is_file()][:2000] if args.corpus else []
    mix = realistic_mix(args.messages, corpus, rng)
    size = sum(len(m) for m in mix)
    print(
        f"mix: {len(mix)} messages, {size / 1e6:.1f} MB, "
        f"{sum(b'Content-Disposition: attachment' in m for m in mix)} with attachments"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rules_dir = Path(tmp) / "synthetic"
        rules_dir.mkdir()
        t0 = time.perf_counter()
        synthetic_rules(rules_dir, args.rules, rng)
        shipped = replace(Settings(), state_dir=str(Path(tmp) / "state"))
        large = replace(shipped, signatures=replace(SignatureSettings(), rules_dirs=(str(rules_dir),)))
        with Unpacker(shipped.limits) as unpacker:
            scan_shipped = inspector(shipped, unpacker)
            t1 = time.perf_counter()
            scan_large = inspector(large, unpacker)
            print(
                f"{args.rules} synthetic rules: written and compiled (per file, then bundled) in "
                f"{time.perf_counter() - t1:.1f}s; a worker's later start loads them from the cache in "
                f"{_time(lambda: signatures.load_rules(large)):.2f}s (generation {t1 - t0:.1f}s)"
            )
            for raw in mix[:20]:  # warm the sandbox, libmagic and the page cache
                scan_large(raw)
            results = [
                run("baseline: MIME parse only", mix, baseline),
                run("inspect + shipped rules", mix, scan_shipped),
                run(f"inspect + {args.rules} rules", mix, scan_large),
            ]
            base = results[0]["total"]
            print(f"\n{'set-up':32} {'msg/s':>8} {'MB/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'x base':>7}")
            for r in results:
                print(
                    f"{r['name']:32} {r['msg_s']:8.1f} {r['mb_s']:7.2f} {r['p50']:8.2f} {r['p99']:8.2f} "
                    f"{r['max']:8.1f} {r['total'] / base:7.1f}"
                )
            print("\nhostile input (inspect + shipped rules), each bounded by the limits:")
            for label, raw in hostile_mix():
                t = time.perf_counter()
                findings = scan_shipped(raw)
                elapsed = time.perf_counter() - t
                unchecked = sorted({f.name for f in findings if f.category.value == "unchecked"})
                print(
                    f"  {label:34} {len(raw) / 1e3:9.1f} kB {elapsed * 1000:9.1f} ms  "
                    f"unchecked: {', '.join(unchecked) or '-'}"
                )
    return 0


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
