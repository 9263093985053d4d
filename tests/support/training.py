"""Shared helpers of the training tests: the fixture sets and the CLI run in process."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

from mailward.cli.main import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "training"


def copy_fixtures(tmp_path: Path) -> Path:
    """A private copy of the fixture sets (tests label and relabel them)."""
    target = tmp_path / "sets"
    shutil.copytree(FIXTURES, target)
    return target


def config(state: Path, text: str = "", shipped: bool = False) -> Path:
    """A configuration for STATE; without the shipped model "live" is only what tests promote."""
    path = state.parent / "mailward.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'state_dir = "{state}"\n[model]\nshipped_model = {str(shipped).lower()}\n{text}')
    return path


def run(state: Path, *argv: str) -> tuple[int, str]:
    """``mailward --config <config(STATE)> ARGV...`` in this process: exit code and standard output."""
    path = state.parent / "mailward.toml"
    if not path.exists():
        config(state)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--config", str(path), *argv])
    return code, out.getvalue()


def run_json(state: Path, *argv: str) -> dict:
    code, out = run(state, *argv, "--json")
    assert code == 0, out
    return json.loads(out)
