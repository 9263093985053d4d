"""A cleanup that fails after a store error: the store error is what the caller sees, the leftover is logged."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import pytest

from mailward.errors import StoreError
from mailward.quarantine.files import MessageFiles
from mailward.source import MessageSource
from real_parts import require
from support.mail import plain_mail as message


def _chattr(flag: str, path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True)


def test_immutable_directory_keeps_the_store_error_and_logs_the_leftover(tmp_path, caplog):
    require(os.geteuid() == 0, "chattr +i needs root")
    files = MessageFiles(tmp_path / "messages")
    fifo = tmp_path / "incoming"
    os.mkfifo(fifo)
    message_bytes = message("leftover")

    def feed() -> None:
        # Once the writer has its temporary file, make the directory immutable, then hand over the bytes:
        # linking the final name fails, and so does removing the temporary file.
        deadline = time.monotonic() + 30
        while not list(files.directory.glob(".tmp-*")):
            assert time.monotonic() < deadline, "the writer never created its temporary file"
            time.sleep(0.01)
        _chattr("+i", files.directory)
        with open(fifo, "wb") as out:
            out.write(message_bytes)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="mailward.quarantine.files"),
            pytest.raises(StoreError, match="cannot write quarantined message"),
        ):
            files.write("20240501T000000Z-0123456789abcdef", MessageSource.spooled(fifo, len(message_bytes)))
        feeder.join(timeout=30)
        leftovers = list(files.directory.glob(".tmp-*"))
        assert len(leftovers) == 1
        assert any(leftovers[0].name in r.getMessage() and "sweep" in r.getMessage() for r in caplog.records)
    finally:
        _chattr("-i", files.directory)
    assert files.sweep(lambda _id: False, older_than=0, now=time.time() + 1) == 1  # the sweep removes it later
    assert list(files.directory.iterdir()) == []
