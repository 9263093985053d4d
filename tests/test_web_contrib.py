"""The web page's and the digest's systemd units in contrib/ are valid and agree with the configuration."""

from __future__ import annotations

import pytest

from mailward.config import load_settings, parse_host_port
from support.contrib import CONTRIB, VENV_IN_UNIT, unit_entries, verify_units

UNITS = ("mailward-web.service", "mailward-digest.service", "mailward-digest.timer")


@pytest.mark.parametrize("name", UNITS)
def test_units_are_valid_for_systemd(tmp_path, name):
    verify_units(tmp_path, UNITS, name)


def test_web_unit_serves_the_shipped_configuration_on_loopback():
    service = unit_entries((CONTRIB / "systemd" / "mailward-web.service").read_text())["Service"]
    command = service["ExecStart"][0].split()
    assert command[0] == f"{VENV_IN_UNIT}/bin/mailward" and command[-1] == "web"
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    settings = load_settings(CONTRIB / "mailward.toml")
    assert parse_host_port(settings.web.listen)[0] == "127.0.0.1"
    digest = unit_entries((CONTRIB / "systemd" / "mailward-digest.service").read_text())["Service"]
    assert "quarantine digest" in digest["ExecStart"][0]
