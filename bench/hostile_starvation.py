"""Do hostile or slow messages starve clean mail? Clean-mail delay behind them, main vs this tree.

Two scenarios through a real ``ScanPool`` with 2 workers, each run once with
the code of a git ref (default ``main``, unpacked from ``git archive`` into a
temporary directory) as the same-run baseline and once with this tree:

* ``hostile``: the issue's two crafted messages (a 400 KB ``data:`` link
  without ``download``; 1.2 MB of text with 160 ``begin`` lines and no
  ``end``), sent first from one client, then 10 clean messages from others.
* ``burst``: 6 large but honest messages (20 MB of text, seconds each) from
  one client, then 10 clean messages from others: the pool's fairness alone.

Prints, per code version and scenario, the clean messages' delay (p50/max),
how many of them ended ``unchecked``, and what the first messages cost.

    .venv/bin/python bench/hostile_starvation.py [--baseline main] [--deadline 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from email.message import EmailMessage
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAN_CLIENTS = [f"198.51.100.{i}" for i in range(1, 11)]
NOISY_CLIENT = "192.0.2.66"


def _mail(subject: str, body: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.net", subject
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment[1], maintype="text", subtype="html", filename=attachment[0])
    return msg.as_bytes()


def hostile_messages() -> list[bytes]:
    page = b'<html><a href="data:a/b;base64,' + b"A" * 400_000 + b'">x</a></html>'
    block = b"x y\n" * (1_200_000 // 160 // 4)
    uuencoded = b"".join(b"begin 644 part%d.bin\n" % i + block for i in range(160))
    return [_mail("invoice", "see attached", ("invoice.html", page)), _mail("archive", uuencoded.decode("ascii"))]


def slow_messages() -> list[bytes]:
    return [_mail(f"report {i}", "quarterly figures and notes\n" * 750_000) for i in range(6)]


def clean_messages() -> list[bytes]:
    return [
        _mail(f"minutes {i}", "Hello,\n\nthe minutes of today's meeting are below.\n\nRegards,\nAnna\n")
        for i in range(10)
    ]


def measure(scenario: str, deadline: float) -> dict:
    """Run one scenario in this process with whichever ``mailward`` is on the path."""
    from mailward.config import load_settings
    from mailward.envelope import Envelope
    from mailward.source import MessageSource
    from mailward.workers import ScanPool

    settings = load_settings(overrides={"state_dir": tempfile.mkdtemp(), "reputation": {"enabled": False}})
    pool = ScanPool(settings, 2)
    try:
        warm = [
            threading.Thread(target=pool.scan, args=(m, Envelope(client_address=c), 120))
            for m, c in zip(clean_messages()[:2], CLEAN_CLIENTS)
        ]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        first = hostile_messages() if scenario == "hostile" else slow_messages()
        results: dict[str, tuple[float, list[str]]] = {}

        def send(key: str, raw: bytes, client: str) -> None:
            sent = time.monotonic()
            try:
                found = pool.scan(MessageSource.of(raw), Envelope(client_address=client), deadline).findings
                names = [f.name for f in found]
            except Exception as exc:  # a failed scan is an outcome to count, not the end of the bench
                names = [f"failed:{type(exc).__name__}"]
            results[key] = (time.monotonic() - sent, names)

        threads = [threading.Thread(target=send, args=(f"first{i}", m, NOISY_CLIENT)) for i, m in enumerate(first)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # the first messages reach the workers before the clean ones
        clean = [
            threading.Thread(target=send, args=(f"clean{i}", m, c))
            for i, (m, c) in enumerate(zip(clean_messages(), CLEAN_CLIENTS))
        ]
        for t in clean:
            t.start()
        for t in threads + clean:
            t.join()
    finally:
        pool.close()
    delays = sorted(results[f"clean{i}"][0] for i in range(10))
    return {
        "clean_p50": delays[4],
        "clean_max": delays[-1],
        "clean_unchecked": sum(
            any(n.startswith(("scan-", "failed")) for n in results[f"clean{i}"][1]) for i in range(10)
        ),
        "first": [(round(results[f"first{i}"][0], 2), results[f"first{i}"][1]) for i in range(len(first))],
    }


def baseline_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(source: Path, scenario: str, deadline: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(source))
    out = subprocess.run(
        [sys.executable, __file__, "--measure", scenario, "--deadline", str(deadline)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git ref whose src/ is the baseline")
    ap.add_argument("--deadline", type=float, default=60.0, help="per-message scan deadline (milter.message_deadline)")
    ap.add_argument("--scenarios", nargs="*", default=["hostile", "burst"])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.deadline)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        trees = {args.baseline: baseline_tree(args.baseline, Path(tmp)), "this tree": ROOT / "src"}
        print(
            f"{'code':<10} {'scenario':<8} {'clean p50 s':>11} {'clean max s':>11} {'unchecked':>9}  "
            "first messages (s, findings)"
        )
        for scenario in args.scenarios:
            for label, source in trees.items():
                r = run(source, scenario, args.deadline)
                print(
                    f"{label:<10} {scenario:<8} {r['clean_p50']:>11.2f} {r['clean_max']:>11.2f} "
                    f"{r['clean_unchecked']:>6}/10  {r['first']}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
