"""What the analysts' commands share: exit codes, the incident store, a row limit.

The store is opened as the analyst (recorded in the audit trail) and closed
when the command is done with it, alerts sent; a value the analyst typed that
does not parse (an address, a domain, a network) ends the command with a
one-line error and exit status 1 (``cli.main``), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from ..actor import Actor
from ..config import Settings
from ..errors import MailwardError
from ..incidents import IncidentResponse, open_incidents
from ..textsafe import neutralise

OK, FAILED, REFUSED = 0, 1, 3  # REFUSED: already listed, or nothing to remove


class BadValue(MailwardError):
    """The analyst's value is not a valid subject for the command."""


@contextmanager
def incident_store(settings: Settings, analyst: str, command: str) -> Iterator[IncidentResponse]:
    incidents = open_incidents(settings, actor=Actor.current(analyst))
    try:
        yield incidents
    except ValueError as exc:
        raise BadValue(f"{command}: {neutralise(str(exc))}") from exc
    finally:
        incidents.close()


def row_limit(text: str) -> int:
    """``--limit``: a count of rows to show (a negative one is an error, not PostgreSQL's crash)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of rows: {text!r}")
    return value
