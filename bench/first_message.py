"""Start to first message: how long after `mailward-milter` starts its socket answers, and a message is accepted.

Starts the milter of this checkout (and of ``--baseline CHECKOUT``, interleaved, ``--repeat``
times each) on a unix socket with ``--workers`` scanning processes and a warm rules cache
(one start before the timed ones compiles it), connects as soon as the socket exists and
sends one small message. Prints, per start, the seconds to the socket and to the accepted
message, the CPU seconds its processes (milter, forkserver, workers, parser sandboxes) used
by then (on a busy machine the wall clock mostly says how busy it is; the CPU says what the
start costs), and the medians of each checkout.

Each checkout's modules are byte-compiled first, as an installed Mailward has them
(``scripts/setup`` compiles a checkout; a process started with ``PYTHONDONTWRITEBYTECODE``,
as the forkserver is whenever the milter is, never writes them itself);
``--no-compile`` measures a start that compiles every module from source.

    .venv/bin/python bench/first_message.py --baseline /tmp/base --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness.milter_client import MilterSession  # noqa: E402
from postfix_compare import cpu, tree  # noqa: E402

MESSAGE = b"From: a@example.org\r\nTo: u@example.test\r\nSubject: hello\r\n\r\nJust a short note.\r\n"


def compile_modules(checkout: Path | None) -> None:
    """Byte-compile the Mailward that ``checkout`` (None: this one) runs, as scripts/setup does."""
    src = (checkout or Path(__file__).resolve().parent.parent) / "src" / "mailward"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL)


def start(home: Path, workers: int, checkout: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
    sock = home / "sock" / "milter.sock"
    config = home / "mailward.toml"
    config.write_text(
        f'state_dir = "{home / "state"}"\n[milter]\nsocket = "unix:{sock}"\nworkers = {workers}\n'
        f'[reputation]\nenabled = false\n[logging]\nfile = "{home / "milter.log"}"\n'
    )
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout / "src"), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return proc, sock


def first_message(home: Path, workers: int, checkout: Path | None) -> tuple[float, float, float]:
    """Seconds from the start to the socket and to the first message's final reply; CPU seconds by then."""
    started = time.monotonic()
    proc, sock = start(home, workers, checkout)
    try:
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"the milter did not start (see {home / 'milter.log'})")
            time.sleep(0.005)
        listening = time.monotonic() - started
        while True:  # libmilter binds (the file appears) a moment before it listens
            try:
                session = MilterSession(str(sock))
                break
            except ConnectionRefusedError:
                time.sleep(0.002)
        with session:
            session.negotiate()
            session.connect()
            session.helo()
            reply, _ = session.message(MESSAGE)
        answered = time.monotonic() - started
        if reply != b"a":
            raise RuntimeError(f"the first message was answered {reply!r}, not accepted")
        return listening, answered, cpu(tree(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another Mailward checkout to start interleaved with this one")
    ap.add_argument("--no-compile", action="store_true", help="do not byte-compile the checkouts first")
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="mailward-start-", dir="/tmp"))
    checkouts: list[tuple[str, Path | None]] = [("new", None)]
    if args.baseline:
        checkouts.insert(0, ("base", args.baseline))
    figures: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for label, checkout in checkouts:  # warm each checkout's rules cache (and the page cache)
            if not args.no_compile:
                compile_modules(checkout)
            (run / label).mkdir()
            first_message(run / label, args.workers, checkout)
        setup = f"{args.workers} workers, warm cache, {'no bytecode' if args.no_compile else 'bytecode'}"
        print(f"{'run':>5} {'socket s':>9} {'first message s':>16} {'CPU s':>6}   ({setup})")
        for _ in range(args.repeat):
            for label, checkout in checkouts:
                figures.setdefault(label, []).append(first_message(run / label, args.workers, checkout))
                listening, answered, used = figures[label][-1]
                print(f"{label:>5} {listening:9.2f} {answered:16.2f} {used:6.2f}", flush=True)
        print("medians:")
        for label, rows in figures.items():
            listening, answered, used = (statistics.median(col) for col in zip(*rows))
            print(f"{label:>5} {listening:9.2f} {answered:16.2f} {used:6.2f}")
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
