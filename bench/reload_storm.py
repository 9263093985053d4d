"""Per-message latency through a real Postfix + mailward-milter, with and without a reload (SIGUSR1) every second.

Needs root and Postfix (./scripts/setup). Several SMTP sessions each send a message at a steady
pace (a realistic mix from bench/milter_throughput.py) for a fixed time, in three phases of one
run against the same milter: no reloads (baseline), a reload every second with nothing changed,
and a reload every second after editing a rule file (every reload must load new scanning
processes). Prints per-message p50/p99/max (client side, end of DATA to reply), the milter
process's peak memory and open descriptors, and how many reloads completed.

    .venv/bin/python bench/reload_storm.py --seconds 60 --sessions 4 --interval 0.25
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))
from harness.milter import MilterProcess  # noqa: E402
from harness.postfix import Postfix  # noqa: E402
from milter_throughput import corpus  # noqa: E402


def session(port: int, messages: list[bytes], interval: float, until: float, out: list[tuple[float, int]]) -> None:
    """Send one message every ``interval`` seconds (at once when the last one took longer)."""
    i = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as smtp:
        while time.monotonic() < until:
            due = time.monotonic() + interval
            raw = messages[i % len(messages)]
            i += 1
            started = time.perf_counter()
            try:
                smtp.sendmail("bench@example.org", ["user@bench.test"], raw)
                code = 250
            except smtplib.SMTPResponseException as exc:
                code = exc.smtp_code
                smtp.rset()
            out.append((time.perf_counter() - started, code))
            time.sleep(max(0.0, due - time.monotonic()))


def phase(
    port: int, messages: list[bytes], args, milter: MilterProcess, reload_every: float | None, edit_rule: Path | None
) -> list[tuple[float, int]]:
    results: list[tuple[float, int]] = []
    until = time.monotonic() + args.seconds
    threads = [
        threading.Thread(target=session, args=(port, messages[k :: args.sessions], args.interval, until, results))
        for k in range(args.sessions)
    ]
    for t in threads:
        t.start()
    n = 0
    while reload_every and time.monotonic() < until - reload_every:
        time.sleep(reload_every)
        if edit_rule is not None:
            n += 1
            edit_rule.write_text(f'rule bench_edit_{n} {{ strings: $a = "mailward-bench-{n}" condition: $a }}\n')
        milter.signal(signal.SIGUSR1)
    for t in threads:
        t.join()
    return results


def proc_status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def summary(name: str, results: list[tuple[float, int]]) -> tuple[float, str]:
    times = sorted(t for t, _ in results)
    q = statistics.quantiles(times, n=100)
    codes: dict[int, int] = {}
    for _, code in results:
        codes[code] = codes.get(code, 0) + 1
    line = (
        f"{name:32} n={len(times):5}  p50 {q[49] * 1000:7.1f} ms  p99 {q[98] * 1000:7.1f} ms  "
        f"max {times[-1] * 1000:7.1f} ms  replies {dict(sorted(codes.items()))}"
    )
    return q[98], line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between messages of one session")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    run = Path(tempfile.mkdtemp(prefix="mailward-reload-", dir="/tmp"))
    run.chmod(0o755)
    sock = run / "sock" / "milter.sock"
    rules = run / "rules"
    rules.mkdir()
    edit_rule = rules / "edited.yar"
    edit_rule.write_text('rule bench_edit_0 { strings: $a = "mailward-bench-0" condition: $a }\n')
    pf = Postfix.create(sock)
    pf._postconf(
        "-e",
        "transport_maps = inline:{bench.test=discard:}",
        "relay_domains = bench.test",
        "milter_content_timeout = 300s",
    )
    cfg = run / "mailward.toml"
    log = run / "milter.log"
    cfg.write_text(
        f'state_dir = "{run / "state"}"\n[milter]\nsocket = "unix:{sock}"\nworkers = {args.workers}\n'
        f'[reputation]\nenabled = false\n[signatures]\nrules_dirs = ["{rules}"]\n'
        f'[logging]\nfile = "{log}"\n'
    )
    milter = MilterProcess(cfg, sock, log)
    msgs = corpus(400)
    lines = []
    try:
        milter.start(timeout=180)
        pf.start()
        phase(pf.smtp_port, msgs[:40], argparse.Namespace(**{**vars(args), "seconds": 10}), milter, None, None)
        fds_before = len(os.listdir(f"/proc/{milter.proc.pid}/fd"))
        p99 = {}
        for name, every, edit in (
            ("no reloads (baseline)", None, None),
            ("reload every 1 s, unchanged", 1.0, None),
            ("reload every 1 s, rule edited", 1.0, edit_rule),
        ):
            done_before = log.read_text().count("reloaded from")
            results = phase(pf.smtp_port, msgs, args, milter, every, edit)
            time.sleep(2)
            p99[name], line = summary(name, results)
            reloads = log.read_text().count("reloaded from") - done_before
            fds = len(os.listdir(f"/proc/{milter.proc.pid}/fd"))
            lines.append(f"{line}  reloads completed {reloads}, milter fds {fds}")
        time.sleep(10)  # let the last reload finish before counting descriptors
        fds_after = len(os.listdir(f"/proc/{milter.proc.pid}/fd"))
        peak = proc_status(milter.proc.pid, "VmHWM")
        refused = log.read_text().count("reload refused")
    finally:
        milter.stop()
        pf.destroy()
    print(
        f"{args.sessions} sessions x 1 message / {args.interval} s, {args.seconds:.0f} s per phase, "
        f"{args.workers} scan workers, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for line in lines:
        print(line)
    base = p99["no reloads (baseline)"]
    for name, value in p99.items():
        print(f"p99 ratio {name:32} {value / base:5.2f}x")
    print(f"milter process: peak RSS {peak}, open fds {fds_before} -> {fds_after}, reloads refused {refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
