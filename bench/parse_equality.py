"""Proof on real mail that ``mimeparse.stdlib_parse`` builds the tree the stdlib parser builds.

Parses every message under the given directories (as stored, and with CRLF line ends as the
milter hands them) and ``--mutants`` mutants of them (tests/mutants.py: flipped bytes,
mangled headers and boundaries, truncation, nesting) both ways, and compares the whole
trees: headers, envelope line, payloads, preambles, epilogues, defects. Prints how many
messages took the fast path, the CPU of both, and every message whose trees differ (exit 1).

    .venv/bin/python bench/parse_equality.py /tmp/corpus/spamassassin /tmp/corpus/nazario-phishing \\
        /tmp/corpus/enron-spam --mutants 20000
"""

from __future__ import annotations

import argparse
import email
import email.policy
import random
import sys
import time
from collections.abc import Callable
from email.message import Message
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mailward.mimeparse import stdlib_parse  # noqa: E402
from mutants import mutants  # noqa: E402


def tree(msg: Message) -> object:
    """Everything a parsed Message holds, its parts' too (defects by type: they compare by identity)."""
    out: dict[str, object] = {k: v for k, v in vars(msg).items() if k not in ("policy", "defects")}
    out["defects"] = [type(d).__name__ for d in msg.defects]
    if isinstance(msg._payload, list):
        out["_payload"] = [tree(part) for part in msg._payload]
    return out


def parsed(parse: Callable[[bytes], Message], raw: bytes) -> tuple[object, float]:
    """The tree (or the exception's type) and the CPU seconds it took."""
    started = time.process_time()
    try:
        result = tree(parse(raw))
    except Exception as exc:  # the stdlib's own failures must be the same too
        result = ("raised", type(exc).__name__)
    return result, time.process_time() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directories", nargs="+", type=Path)
    ap.add_argument("--mutants", type=int, default=5000, help="mutants of the messages to compare too")
    args = ap.parse_args()
    files = sorted(p for d in args.directories for p in d.rglob("*") if p.is_file())
    messages = [(str(p), p.read_bytes()) for p in files]
    messages += [(f"{name} (CRLF)", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for name, raw in messages]
    seeds = [raw for _, raw in random.Random(3).sample(messages, min(500, len(messages))) if len(raw) < 200_000]
    messages += [(f"mutant {name}", raw) for name, raw in mutants(seeds, args.mutants, seed=5)]

    def stdlib(raw: bytes) -> Message:
        return email.message_from_bytes(raw, policy=email.policy.compat32)

    differ, seconds = [], {"stdlib": 0.0, "mimeparse": 0.0}
    for name, raw in messages:
        expected, spent = parsed(stdlib, raw)
        seconds["stdlib"] += spent
        got, spent = parsed(stdlib_parse, raw)
        seconds["mimeparse"] += spent
        if got != expected:
            differ.append(name)
    print(f"{len(messages)} messages ({len(files)} files, as stored and with CRLF, and {args.mutants} mutants)")
    for parser, spent in seconds.items():
        print(f"  {parser:10} {spent * 1000 / len(messages):.4f} ms CPU per message")
    print(f"trees identical on {len(messages) - len(differ)} of {len(messages)}")
    for name in differ[:20]:
        print(f"  differs: {name}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
