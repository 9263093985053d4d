"""The ECS JSON log line: written whatever the record carries."""

from __future__ import annotations

import json
import logging
import sys

from mailward.logs import EcsJsonFormatter


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
