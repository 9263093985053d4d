"""Resident memory of a real milter's scanning workers at rest, with the shipped model.

    python bench/worker_memory.py [--workers 2] [--backend sqlite|postgresql]

Starts ``mailward-milter`` (shipped rules and model, reputation off) in a
temporary state directory, waits until it listens (its workers have then loaded
rules and model and scanned the warm-up message), and prints each process's
RSS, PSS (shared pages split among the processes that map them) and USS (pages
only it maps). Same-run baseline: the forkserver, which has imported the same
libraries but loaded no rules and no model; a worker's figure above it is what
rules, model and scanning cost. ``--backend postgresql`` starts a throwaway
PostgreSQL (tests/pg_server.py) and loads the model from the database registry.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MiB (smaps_rollup)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def role(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
    if "forkserver" in cmd:
        return "forkserver"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "worker" if "mailward.milter.daemon" not in cmd else "milter"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailward-workermem-"))
    server = None
    extra = ""
    if args.backend == "postgresql":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from pg_server import PostgresServer

        server = PostgresServer()
        server.start()
        extra = f'[quarantine]\nbackend = "postgresql"\ndsn = "{server.dsn}"\n'
        _promote_shipped(work, extra)
    config = work / "mailward.toml"
    sock = work / "milter.sock"
    config.write_text(
        f'state_dir = "{work / "state"}"\n{extra}[milter]\nsocket = "unix:{sock}"\n'
        f"workers = {args.workers}\n[reputation]\nenabled = false\n"
        f'[logging]\nfile = "{work / "milter.log"}"\n'
    )
    milter = subprocess.Popen([sys.executable, "-m", "mailward.milter.daemon", "--config", str(config)])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from harness.milter import unix_listening

    try:
        deadline = time.monotonic() + 300
        while not unix_listening(sock):
            if milter.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"milter did not start (exit {milter.returncode}); see {work / 'milter.log'}")
            time.sleep(0.2)
        time.sleep(2)  # at rest: let the warm-up scans' temporaries go
        rows = [("milter", milter.pid)]
        for pid in children(milter.pid):
            rows.append((role(pid), pid))
            rows.extend(("worker", worker) for worker in children(pid))
        print(
            f"{'process':18s} {'pid':>7s} {'RSS MiB':>8s} {'PSS MiB':>8s} {'USS MiB':>8s}   "
            f"({args.workers} workers, {args.backend} backend)"
        )
        for name, pid in rows:
            m = memory(pid)
            print(f"{name:18s} {pid:7d} {m['rss']:8.1f} {m['pss']:8.1f} {m['uss']:8.1f}")
    finally:
        milter.terminate()
        milter.wait(timeout=60)
        if server is not None:
            server.stop()
    return 0


def _promote_shipped(work: Path, extra: str) -> None:
    """Make the shipped model the database registry's live version, so workers load it from there."""
    config = work / "cli.toml"
    config.write_text(f'state_dir = "{work / "state"}"\n{extra}')
    subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--config", str(config), "model", "promote", "shipped", "--force"],
        check=True,
        env={**os.environ},
    )


if __name__ == "__main__":
    sys.exit(main())
