"""A long-lived process that holds the quarantine and incident stores open, as the milter does.

Run as ``python store_holder.py STATE_DIR``; one command per stdin line, one
JSON answer per stdout line:

``open``            open both stores again (what a reload does) and use the new ones from now on;
                    the old ones stay open and usable, like a reload that has not closed them yet
``put SUBJECT``     quarantine a message; answers its ID
``ids``             every quarantine ID
``label ID``        the label of a record (null if none or no such record)
``block VALUE``     add an analyst block on the address VALUE
``blocks``          the values of all active blocks
``old-put SUBJECT`` quarantine through the first (pre-reload) store
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mailward.config import load_settings  # noqa: E402
from mailward.incidents import Origin, SubjectKind  # noqa: E402
from mailward.incidents import open_store as open_incident_store  # noqa: E402
from mailward.quarantine import ListFilter, open_store  # noqa: E402
from mailward.source import MessageSource  # noqa: E402
from support.mail import plain_mail as message
from support.quarantine import envelope, spam_case  # noqa: E402


def main() -> None:
    settings = load_settings(None, {"state_dir": sys.argv[1]})
    quarantines = [open_store(settings)]
    incidents = [open_incident_store(settings)]
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "open":
            quarantines.append(open_store(settings))
            incidents.append(open_incident_store(settings))
            answer: object = len(quarantines)
        elif command in ("put", "old-put"):
            store = quarantines[0] if command == "old-put" else quarantines[-1]
            verdict, evidence = spam_case()
            answer = store.put(MessageSource.of(message(arg)), envelope(), verdict, evidence)
        elif command == "ids":
            answer = sorted(r.id for r in quarantines[-1].list(ListFilter(limit=100_000)))
        elif command == "label":
            record = quarantines[-1].get(arg)
            answer = record.label.value if record is not None and record.label is not None else None
        elif command == "block":
            incidents[-1].add_block(SubjectKind.ADDRESS, arg, Origin.ANALYST, "test", "-", "holder", "host")
            answer = arg
        elif command == "blocks":
            answer = sorted(b.value for b in incidents[-1].active_blocks())
        else:
            answer = f"unknown command {command}"
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
