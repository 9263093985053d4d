"""Peak RSS of the milter process while it screens large messages with a forged release mark.

A forged ``X-Mailward-Release`` header used to make the milter process (the one
holding every SMTP connection) read whole spooled messages to check the mark.
This sends N concurrent large messages (GTUBE, so the verdict is not accept,
plus a forged mark) through a real Postfix to mailward-milter and reads the
milter process's peak RSS (VmHWM, reset after start-up) from /proc. In one run it measures the code
at ``--before`` (a git revision, run via PYTHONPATH from an exported tree) and
the working tree's code, each once without and once with the forged header.

Needs root and Postfix (./scripts/setup).

    .venv/bin/python bench/release_mark_memory.py --size-mb 100 --concurrent 3 --before main
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from harness.milter import MilterProcess  # noqa: E402
from harness.postfix import Postfix  # noqa: E402
from support.mail import GTUBE  # noqa: E402

FORGED = "X-Mailward-Release: MW-FORGED-00000000 1700000000 " + "0" * 64


def big_message(size: int, forged: bool, n: int) -> bytes:
    head = (
        f"From: a@example.org\r\nTo: user@bench.test\r\nSubject: big {n}\r\n"
        f"Message-ID: <big-{n}-{time.time_ns()}@example.org>\r\n"
        + (FORGED + "\r\n" if forged else "")
        + "\r\n"
        + GTUBE
        + "\r\n"
    ).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n"
    return head + line * (size // len(line))


def kib(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    return 0


def send_all(port: int, messages: list[bytes]) -> list[str]:
    results: list[str] = [""] * len(messages)

    def one(i: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=600) as smtp:
                smtp.sendmail("a@example.org", ["user@bench.test"], messages[i])
            results[i] = "250"
        except smtplib.SMTPResponseException as exc:
            results[i] = str(exc.smtp_code)
        except Exception as exc:  # noqa: BLE001 - a figure, not a test
            results[i] = type(exc).__name__

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def export(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def measure(pf: Postfix, run: Path, sock: Path, src: Path, forged: bool, args) -> dict:
    state = run / f"state-{time.time_ns()}"
    cfg, log = run / "mailward.toml", run / f"milter-{time.time_ns()}.log"
    cfg.write_text(
        f'state_dir = "{state}"\n[policy.inbound]\nspam_action = "reject"\n'
        f'[milter]\nsocket = "unix:{sock}"\nworkers = {args.workers}\nmessage_deadline = 300.0\n'
        f'[logging]\nfile = "{log}"\n'
    )
    os.environ["PYTHONPATH"] = str(src)
    milter = MilterProcess(cfg, sock, log)
    milter.start()
    try:
        time.sleep(1.0)
        # Start-up (rules, model) has its own transient peak: reset the high-water mark to measure the mail.
        Path(f"/proc/{milter.proc.pid}/clear_refs").write_text("5")
        start_rss = kib(milter.proc.pid, "VmRSS")
        messages = [big_message(args.size_mb * 1024 * 1024, forged, i) for i in range(args.concurrent)]
        started = time.perf_counter()
        replies = send_all(pf.smtp_port, messages)
        seconds = time.perf_counter() - started
        peak = kib(milter.proc.pid, "VmHWM")
        verdicts = sorted(e["mailward"]["verdict"] for e in milter.events() if "verdict" in e.get("mailward", {}))
    finally:
        milter.stop()
        os.environ.pop("PYTHONPATH", None)
    return {
        "start_mib": start_rss / 1024,
        "peak_mib": peak / 1024,
        "seconds": seconds,
        "replies": replies,
        "verdicts": verdicts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--before", default="main", help="git revision to measure as the baseline ('' to skip)")
    args = ap.parse_args()

    run = Path(tempfile.mkdtemp(prefix="mailward-bench-", dir="/tmp"))
    run.chmod(0o755)
    sock = run / "sock" / "milter.sock"
    pf = Postfix.create(sock)
    pf._postconf(
        "-e",
        "transport_maps = inline:{bench.test=discard:}",
        "relay_domains = bench.test",
        "message_size_limit = 0",
        "mailbox_size_limit = 0",
        "virtual_mailbox_limit = 0",
        "milter_content_timeout = 600s",
        "milter_command_timeout = 600s",
    )
    pf.start()
    trees = [("before " + args.before, export(args.before, run))] if args.before else []
    trees.append(("this tree", ROOT / "src"))
    print(f"{args.concurrent} concurrent messages of {args.size_mb} MiB, {args.workers} scan workers")
    try:
        for name, src in trees:
            for forged in (False, True):
                r = measure(pf, run, sock, src, forged, args)
                print(
                    f"{name:18} {'forged mark' if forged else 'no mark    '}  milter RSS at start "
                    f"{r['start_mib']:7.1f} MiB, peak {r['peak_mib']:7.1f} MiB  ({r['seconds']:.1f} s; "
                    f"replies {','.join(r['replies'])}; verdicts {json.dumps(r['verdicts'])})",
                    flush=True,
                )
    finally:
        pf.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
