"""The milter process's own ceiling: a load generator speaking the milter protocol, no Postfix.

Starts `mailward-milter` on a unix socket with 1, 2 and 4 scanning workers in turn and
sends the same real messages (``--sample``, e.g. a corpus unpacked to /tmp/corpus) over
``--sessions`` concurrent milter connections (tests/harness/milter_client.py, one process
each). Prints msg/s, CPU per message of the milter process and of the workers, and the
end-of-message latency p50/p99/max. With ``--profile`` a py-spy profile of the milter
process (the last worker count) is written beside, to see where its CPU goes. With
``--baseline CHECKOUT`` (e.g. ``git worktree add /tmp/base main``) that checkout's milter runs
too, interleaved with this one ``--repeat`` times per worker count; medians are printed last.
``--floor`` adds an empty pymilter milter (bench/empty_milter.py, row ``empty``): what
libmilter, pymilter and Python callbacks cost per message with no work at all.

    .venv/bin/python bench/milter_load.py --sample /tmp/corpus/spamassassin --messages 2000 --sessions 8
    .venv/bin/python bench/milter_load.py --baseline /tmp/base --repeat 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.milter_client import MilterSession  # noqa: E402
from postfix_compare import cpu, sample, tree  # noqa: E402


def _session(args: tuple[str, list[bytes]]) -> list[float]:
    address, batch = args
    latencies = []
    with MilterSession(address) as session:
        session.negotiate()
        session.connect()
        session.helo()
        for n, raw in enumerate(batch):
            started = time.perf_counter()
            session.message(raw, queue_id=f"Q{n:X}")
            latencies.append(time.perf_counter() - started)
    return latencies


def _start(
    run: Path, workers: int, extra: str, level: str, checkout: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """The milter of this checkout, or of ``checkout`` (its ``src`` first on the path), on a fresh state dir."""
    home = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=run))
    sock = home / "sock" / "milter.sock"
    (home / "mailward.toml").write_text(
        f'state_dir = "{home / "state"}"\n{extra}\n[milter]\nsocket = "unix:{sock}"\nworkers = {workers}\n'
        f'[reputation]\nenabled = false\n[logging]\nfile = "{home / "milter.log"}"\nlevel = "{level}"\n'
    )
    env = dict(os.environ)
    if workers == 0 and checkout is None and extra == "empty":
        sock.parent.mkdir()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "empty_milter.py"), f"unix:{sock}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return _started(proc, sock)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout / "src"), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(home / "mailward.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return _started(proc, sock)


def _started(proc: subprocess.Popen, sock: Path) -> tuple[subprocess.Popen, str]:
    """Once the milter accepts a connection: the socket file exists a moment before it listens."""
    deadline = time.monotonic() + 120
    while not _accepts(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mailward did not start")
        time.sleep(0.02)
    return proc, str(sock)


def _accepts(sock: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _q(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=Path("/tmp/corpus/spamassassin"))
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--config", default="", help="extra TOML put at the top of the configuration")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--strace", type=Path, help="write strace -c -f of the milter process (slows it down)")
    ap.add_argument("--profile", type=Path, help="write a py-spy profile (speedscope JSON) of the milter process")
    ap.add_argument("--baseline", type=Path, help="another Mailward checkout to run interleaved with this one")
    ap.add_argument("--repeat", type=int, default=1, help="runs per worker count (and per checkout)")
    ap.add_argument("--floor", action="store_true", help="also run an empty pymilter milter (the floor)")
    args = ap.parse_args()
    msgs = sample(args.sample, args.messages)
    print(f"sample: {len(msgs)} messages, {sum(map(len, msgs)) / 1e6:.1f} MB; {args.sessions} milter sessions")
    run = Path(tempfile.mkdtemp(prefix="mailward-load-", dir="/tmp"))
    pool = multiprocessing.Pool(args.sessions)
    counts = [int(w) for w in args.workers.split(",")]
    try:
        print(
            f"{'run':>5} {'workers':>7} {'msg/s':>7}  CPU ms/msg: {'milter':>6} {'workers':>7}   "
            "latency p50 / p99 / max ms"
        )
        checkouts: list[tuple[str, Path | None]] = [("new", None)]
        if args.baseline:
            checkouts.insert(0, ("base", args.baseline))
        floor = [(0, rep, "empty", None) for rep in range(args.repeat)] if args.floor else []
        runs = floor + [
            (workers, rep, label, src) for workers in counts for rep in range(args.repeat) for label, src in checkouts
        ]
        figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for workers, rep, label, src in runs:
            last = workers == counts[-1] and rep == args.repeat - 1 and label == "new"
            extra = "empty" if label == "empty" else args.config
            proc, address = _start(run, workers, extra, args.log_level, src)
            try:
                pool.map(_session, [(address, msgs[:10])] * min(args.sessions, 4))  # warm every worker
                pids = tree(proc.pid)
                kids = [p for p in pids if p != proc.pid]
                spy = None
                spy_binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin")
                if args.profile and last and spy_binary:
                    spy = subprocess.Popen(
                        [
                            spy_binary,
                            "record",
                            "--pid",
                            str(proc.pid),
                            "--gil",
                            "--nonblocking",
                            "--rate",
                            "1000",
                            "--format",
                            "speedscope",
                            "-o",
                            str(args.profile),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1)
                if args.strace and last:
                    spy = subprocess.Popen(
                        ["strace", "-c", "-f", "-o", str(args.strace), "-p", str(proc.pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1)
                before_m, before_w, before_us = cpu([proc.pid]), cpu(kids), _user_system(proc.pid)
                started = time.perf_counter()
                lat = sorted(
                    x
                    for r in pool.map(_session, [(address, msgs[i :: args.sessions]) for i in range(args.sessions)])
                    for x in r
                )
                rate = len(msgs) / (time.perf_counter() - started)
                milter_ms = (cpu([proc.pid]) - before_m) * 1000 / len(msgs)
                workers_ms = (cpu(kids) - before_w) * 1000 / len(msgs)
                user, system = (after - before for after, before in zip(_user_system(proc.pid), before_us))
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
                figures.setdefault((label, workers), []).append((rate, milter_ms, workers_ms))
                print(
                    f"{label:>5} {workers:7} {rate:7.1f}  {'':11} {milter_ms:6.2f} {workers_ms:7.2f}   "
                    f"{_q(lat, 0.5):6.1f} / {_q(lat, 0.99):6.1f} / {lat[-1] * 1000:6.1f}   (milter user "
                    f"{user * 1000 / len(msgs):.2f}, system {system * 1000 / len(msgs):.2f})",
                    flush=True,
                )
            finally:
                proc.terminate()
                proc.wait(30)
        if args.repeat > 1 or args.baseline:
            print("medians:")
            for (label, workers), rows in figures.items():
                rate, milter_ms, workers_ms = (statistics.median(col) for col in zip(*rows))
                print(f"{label:>5} {workers:7} {rate:7.1f}  {'':11} {milter_ms:6.2f} {workers_ms:7.2f}")
    finally:
        pool.close()
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
