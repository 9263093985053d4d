"""What admins expect of any mail tool's command line: --version, quiet logging on a terminal."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from mailward import __version__
from mailward.cli.main import main


@pytest.mark.parametrize(
    "module,prog", [("mailward.cli.main", "mailward"), ("mailward.milter.daemon", "mailward-milter")]
)
def test_version(module, prog):
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{prog} {__version__}"


def _config(tmp_path, extra: str = "") -> str:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n{extra}')
    return str(cfg)


def test_cli_prints_no_json_log_lines_on_a_terminal(tmp_path, capsys):
    assert main(["--config", _config(tmp_path), "block", "add", "sender", "a@example.org", "--reason", "x"]) == 0
    out = capsys.readouterr()
    assert "a@example.org" in out.out
    assert out.err == ""  # today's two info lines stay out of the way
    logging.getLogger("mailward.test").warning("disk almost full")
    assert capsys.readouterr().err == "mailward: WARNING: disk almost full\n"


def test_cli_logs_json_into_the_configured_file(tmp_path, capsys):
    log_file = tmp_path / "mailward.log"
    cfg = _config(tmp_path, f'[logging]\nfile = "{log_file}"\n')
    assert main(["--config", cfg, "block", "add", "sender", "a@example.org", "--reason", "x"]) == 0
    assert capsys.readouterr().err == ""
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert lines and all(line["service"]["name"] == "mailward" for line in lines)
