"""The web page's and the digest's systemd units in contrib/ are valid and agree with the configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailward.config import load_settings, parse_host_port
from test_contrib_service import CONTRIB, VENV_IN_UNIT, unit_entries

UNITS = ("mailward-web.service", "mailward-digest.service", "mailward-digest.timer")


@pytest.mark.parametrize("name", UNITS)
def test_units_are_valid_for_systemd(tmp_path, name):
    if shutil.which("systemd-analyze") is None:
        return
    for unit in UNITS:  # the timer needs its service beside it
        text = (CONTRIB / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace(VENV_IN_UNIT, str(Path(sys.executable).parent.parent)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_web_unit_serves_the_shipped_configuration_on_loopback():
    service = unit_entries((CONTRIB / "systemd" / "mailward-web.service").read_text())["Service"]
    command = service["ExecStart"][0].split()
    assert command[0] == f"{VENV_IN_UNIT}/bin/mailward" and command[-1] == "web"
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    settings = load_settings(CONTRIB / "mailward.toml")
    assert parse_host_port(settings.web.listen)[0] == "127.0.0.1"
    digest = unit_entries((CONTRIB / "systemd" / "mailward-digest.service").read_text())["Service"]
    assert "quarantine digest" in digest["ExecStart"][0]
