"""Messages/s through a real Postfix on 127.0.0.1, without and with Mailward, in one run.

Needs root and Postfix (./scripts/setup). Sends a realistic mix (plain and HTML text,
newsletters with links, PDF-like and zip attachments, a little EICAR and GTUBE) over
several concurrent SMTP sessions, first with no milter, then with mailward-milter on a
unix socket, and prints both rates, their ratio, and the milter's p50/p99 time per message
from its own log. Delivery is to `discard:` so the disk does not dominate.

    .venv/bin/python bench/milter_throughput.py --messages 2000 --sessions 8
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness.milter import MilterProcess  # noqa: E402
from harness.postfix import Postfix  # noqa: E402
from support.mail import EICAR, GTUBE, message  # noqa: E402

WORDS = [
    "meeting",
    "report",
    "budget",
    "project",
    "schedule",
    "review",
    "contract",
    "invoice",
    "team",
    "customer",
    "server",
    "update",
    "release",
    "deadline",
    "agenda",
    "minutes",
    "quarter",
    "results",
    "proposal",
    "design",
    "draft",
]


def _pdf(text: str) -> bytes:
    """A real, valid one-page PDF carrying ``text`` (a compressed content stream)."""
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page()
    content = "BT /F1 10 Tf 20 800 Td (" + text[:20000].replace("(", "").replace(")", "") + ") Tj ET"
    pdf.pages[0].Contents = pdf.make_stream(content.encode("latin-1", "replace"))
    buf = io.BytesIO()
    pdf.save(buf, compress_streams=True)
    return buf.getvalue()


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds of a process and of its descendants, from /proc (user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    children = [p for p in parent if _descends(p, root_pid, parent)]
    return {"milter": cpu.get(root_pid, 0.0), "workers": sum(cpu[p] for p in children)}


def _descends(pid: int, root: int, parent: dict[int, int]) -> bool:
    while pid in parent and pid > 1:
        pid = parent[pid]
        if pid == root:
            return True
    return False


def corpus(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 400)))
        kind = rnd.random()
        if kind < 0.60:
            raw = message(body=text)[1]
        elif kind < 0.75:
            links = "\n".join(
                f"https://news{rnd.randint(1, 50)}.example.com/a/{rnd.randint(1, 10**6)}" for _ in range(8)
            )
            raw = message(body=f"{text}\n{links}\n", subject="Weekly newsletter")[1]
        elif kind < 0.85:
            pdf = _pdf(text * rnd.randint(5, 40))
            raw = message(body=text, attachments=(("report.pdf", pdf, "application/pdf"),))[1]
        elif kind < 0.95:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("notes.txt", text * 20)
                zf.writestr("data.csv", "\n".join(f"{j},{rnd.random()}" for j in range(2000)))
            raw = message(body=text, attachments=(("docs.zip", buf.getvalue(), "application/zip"),))[1]
        elif kind < 0.975:
            raw = message(body=text, attachments=(("tool.com", EICAR, "application/octet-stream"),))[1]
        else:
            raw = message(body=f"{text}\n{GTUBE}\n")[1]
        out.append(raw)
    return out


def _session(args: tuple[int, list[bytes]]) -> tuple[int, int]:
    port, batch = args
    ok = failed = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        for raw in batch:
            try:
                smtp.sendmail("bench@example.org", ["user@bench.test"], raw)
                ok += 1
            except smtplib.SMTPResponseException:
                failed += 1  # rejected or tempfailed: still a message the filter handled
                smtp.rset()
    return ok, failed


def blast(port: int, messages: list[bytes], sessions: int) -> float:
    batches = [(port, messages[i::sessions]) for i in range(sessions)]
    started = time.perf_counter()
    with multiprocessing.Pool(sessions) as pool:
        pool.map(_session, batches)
    return len(messages) / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="mailward scanning processes")
    args = ap.parse_args()

    run = Path(tempfile.mkdtemp(prefix="mailward-bench-", dir="/tmp"))
    run.chmod(0o755)
    sock = run / "sock" / "milter.sock"
    pf = Postfix.create(sock)
    pf._postconf(
        "-e",
        "transport_maps = inline:{bench.test=discard:}",
        "relay_domains = bench.test",
        "smtpd_milters =",
        "non_smtpd_milters =",
    )
    pf.start()
    msgs = corpus(args.messages)
    mb = sum(map(len, msgs)) / 1e6
    print(f"mix: {len(msgs)} messages, {mb:.1f} MB, {args.sessions} SMTP sessions, {args.workers} scan workers")
    try:
        blast(pf.smtp_port, msgs[:50], args.sessions)  # warm Postfix
        base = blast(pf.smtp_port, msgs, args.sessions)

        cfg = run / "mailward.toml"
        log = run / "milter.log"
        cfg.write_text(
            f'state_dir = "{run / "state"}"\n[milter]\nsocket = "unix:{sock}"\nworkers = {args.workers}\n'
            f'[logging]\nfile = "{log}"\n'
        )
        milter = MilterProcess(cfg, sock, log)
        milter.start()
        pf._postconf("-e", f"smtpd_milters = unix:{sock}")
        subprocess.run(["postfix", "-c", str(pf.conf), "reload"], check=True, capture_output=True)
        time.sleep(1.5)
        blast(pf.smtp_port, msgs[:50], args.sessions)  # warm workers
        log.write_text("")
        before = cpu_seconds(milter.proc.pid)
        with_mw = blast(pf.smtp_port, msgs, args.sessions)
        after = cpu_seconds(milter.proc.pid)
        time.sleep(0.5)
        summaries = [e for e in milter.events() if "duration" in e.get("event", {}) and "verdict" in e["mailward"]]
        durations = sorted(e["event"]["duration"] / 1e6 for e in summaries)
        stages: dict[str, list[float]] = {}
        actions: dict[str, int] = {}
        for e in summaries:
            actions[e["mailward"]["verdict"]] = actions.get(e["mailward"]["verdict"], 0) + 1
            for stage, ms in e["mailward"]["timings_ms"].items():
                stages.setdefault(stage, []).append(ms)
        milter.stop()
    finally:
        pf.destroy()

    q = statistics.quantiles(durations, n=100) if len(durations) > 2 else [0] * 99
    print(f"postfix alone:          {base:8.1f} msg/s")
    print(f"postfix + mailward:     {with_mw:8.1f} msg/s")
    print(f"ratio (with/without):   {with_mw / base:8.3f}")
    print(f"milter time per message: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms (n={len(durations)})")
    print(f"verdicts: {json.dumps(actions, sort_keys=True)}")
    for part in ("milter", "workers"):
        print(
            f"CPU per message, {part + ' process' + ('es' if part == 'workers' else ''):18} "
            f"{(after[part] - before[part]) * 1000 / len(msgs):6.2f} ms"
        )
    print("time per stage inside the scanning worker (ms, p50 / p99):")
    for stage, values in sorted(stages.items(), key=lambda kv: -sum(kv[1])):
        values.sort()
        print(f"  {stage:12} {values[len(values) // 2]:7.2f} / {values[int(len(values) * 0.99)]:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
