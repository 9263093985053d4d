"""`mailward watch-auth`: follow Postfix's log and block addresses after repeated failed SMTP logins.

Runs until SIGTERM or SIGINT (or, with ``--once``, until the end of the file).
Counts go to the shared incident store, so several Postfix hosts each running
a follower count together; the milter rejects a blocked address at connect.
The same follower can run inside the milter instead (``incidents.follow_auth_log``).
"""

from __future__ import annotations

import argparse
import signal
import threading

from ..config import Settings
from ..incidents import open_incidents
from ..incidents.authlog import LogFollower, watch


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("watch-auth", help="block client addresses after repeated failed SMTP logins")
    p.add_argument("--log", help="Postfix's log file (default: incidents.auth_log)")
    p.add_argument("--from-start", action="store_true", help="read the file from its beginning, not its end")
    p.add_argument("--once", action="store_true", help="stop at the end of the file instead of following it")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    incidents = open_incidents(settings)
    follower = LogFollower(args.log or settings.incidents.auth_log, offset=0 if args.from_start or args.once else None)
    try:
        watch(follower, incidents.failed_login, stop, until_eof=args.once)
    finally:
        incidents.close()
    return 0
