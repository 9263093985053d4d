"""The composition root: what a runtime opens, it closes, and `mailward scan`'s runtime opens nothing.

SQLite removes a database's ``-wal`` and ``-shm`` files when its last connection closes,
so their absence shows that no connection was left open.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mailward.config import ReputationSettings, Settings
from mailward.envelope import Envelope
from mailward.errors import MailwardError
from mailward.evidence import Category
from mailward.incidents.store import IncidentStoreError
from mailward.runtime import build_runtime
from mailward.source import MessageSource
from support.mail import eicar_message


def settings_in(state: Path) -> Settings:
    return replace(Settings(), state_dir=str(state), reputation=ReputationSettings(enabled=False))


def open_files(state: Path) -> list[str]:
    return sorted(p.name for p in state.rglob("*.sqlite3-*"))


def test_closing_a_runtime_closes_every_database_it_opened(tmp_path):
    runtime = build_runtime(settings_in(tmp_path))
    assert open_files(tmp_path) != []  # quarantine and incidents are open
    runtime.close()
    assert open_files(tmp_path) == []


def test_a_runtime_that_cannot_be_built_closes_what_it_opened_first(tmp_path):
    (tmp_path / "incidents.sqlite3").mkdir()  # the incident store cannot open
    with pytest.raises(IncidentStoreError):
        build_runtime(settings_in(tmp_path))
    assert (tmp_path / "quarantine" / "quarantine.sqlite3").exists()
    assert open_files(tmp_path) == []  # the quarantine opened before it is closed again


def test_the_scan_command_runtime_decides_but_keeps_nothing(tmp_path):
    runtime = build_runtime(settings_in(tmp_path), keep=False)
    try:
        outcome = runtime.screener.screen(MessageSource.of(eicar_message()[1]), Envelope())
    finally:
        runtime.close()
    assert outcome.evidence.of(Category.MALWARE) and outcome.quarantine_id == ""
    assert runtime.incidents is None
    with pytest.raises(MailwardError, match="no incident store"):
        runtime.kept_incidents()  # a caller that needs blocks fails, never skips them
    assert not any(
        name in {"quarantine", "incidents.sqlite3", "release.key"} for name in (p.name for p in tmp_path.iterdir())
    )
