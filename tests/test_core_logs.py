"""Log context: every line logged about a message names it, without each call site passing the IDs."""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import replace

from mailward.config import LimitSettings, ReputationSettings, Settings
from mailward.envelope import Direction, Envelope
from mailward.evidence import Evidence
from mailward.logs import EcsJsonFormatter, log_context
from mailward.message import ParsedMessage
from mailward.pipeline import Inspector
from mailward.runtime import InProcessScanner
from mailward.screening import Screener
from mailward.source import MessageSource
from support.mail import message

log = logging.getLogger("mailward.test")


def test_lines_in_a_context_carry_its_ids_and_lines_outside_do_not(log_lines):
    with log_context(queue_id="4QX1", connection_id="c0ffee01"):
        with log_context(incident_id="MW-1", direction="inbound", queue_id=""):  # empty: the outer value stays
            log.warning("inner")
        log.warning("outer")
    log.warning("after")
    inner, outer, after = log_lines.docs
    assert inner["email"] == {"local_id": "4QX1", "direction": "inbound"}
    assert inner["labels"] == {"connection_id": "c0ffee01"} and inner["mailward"] == {"incident_id": "MW-1"}
    assert outer["email"] == {"local_id": "4QX1"} and "mailward" not in outer
    assert "email" not in after and "labels" not in after


def test_one_threads_message_is_not_named_on_another_threads_lines(log_lines):
    inside, done = threading.Event(), threading.Event()

    def other_message() -> None:
        with log_context(queue_id="OTHER"):
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=other_message)
    thread.start()
    assert inside.wait(10)
    log.warning("this thread")
    done.set()
    thread.join()
    assert "email" not in log_lines.docs[0]


class BrokenDetector:
    name = "broken"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        raise RuntimeError("detector bug")


def test_a_detector_failure_names_the_message_and_its_incident(log_lines, tmp_path):
    settings = replace(Settings(), state_dir=str(tmp_path), reputation=ReputationSettings(enabled=False))
    scanner = InProcessScanner(Inspector(LimitSettings(), (BrokenDetector(),)))
    envelope = Envelope(queue_id="4QX2", connection_id="c0ffee02", direction=Direction.OUTBOUND)
    outcome = Screener(settings, scanner, None).screen(MessageSource.of(message()[1]), envelope)
    [failed] = [doc for doc in log_lines.docs if doc["message"] == "detector broken failed"]
    assert failed["email"] == {"local_id": "4QX2", "direction": "outbound"}
    assert failed["labels"] == {"connection_id": "c0ffee02"}
    assert failed["mailward"] == {"incident_id": outcome.verdict.incident_id}
    assert failed["error"]["message"] == "detector bug"


def ecs_line(exc_info) -> dict[str, object]:
    record = logging.LogRecord("mailward.test", logging.ERROR, __file__, 1, "store failed", None, exc_info)
    return json.loads(EcsJsonFormatter().format(record))


def test_exc_info_outside_an_exception_still_writes_the_line():
    """``log.error(..., exc_info=True)`` outside an except block records (None, None, None)."""
    doc = ecs_line(sys.exc_info())
    assert doc["message"] == "store failed" and "error" not in doc


def test_an_exception_is_described_in_ecs_error_fields():
    try:
        raise OSError("disk full")
    except OSError:
        doc = ecs_line(sys.exc_info())
    error = doc["error"]
    assert isinstance(error, dict) and error["type"] == "OSError" and error["message"] == "disk full"
    assert "Traceback" in error["stack_trace"]


def test_an_undecodable_byte_in_a_value_still_writes_valid_utf8():
    """pymilter hands over bytes that are not UTF-8 as lone surrogates (``surrogateescape``)."""
    record = logging.LogRecord("mailward.test", logging.INFO, __file__, 1, "from %s", ("ann\udcff@example.org",), None)
    line = EcsJsonFormatter().format(record)
    assert json.loads(line.encode("utf-8"))["message"] == "from ann\ufffd@example.org"


def test_characters_that_act_on_a_terminal_or_split_a_line_are_escaped():
    name = "\x9b2J\u202efdp.exe\u2028next\x85line"
    record = logging.LogRecord("mailward.test", logging.INFO, __file__, 1, "attachment %s", (name,), None)
    line = EcsJsonFormatter().format(record)
    assert line.isascii() and len(line.splitlines()) == 1
    assert json.loads(line)["message"] == f"attachment {name}"  # the escapes decode back to the same text
