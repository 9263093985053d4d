"""Whom a root `mailward` becomes (the drop itself runs in real processes: test_privileges_postfix.py)."""

from __future__ import annotations

import os
import pwd
from dataclasses import replace

import pytest

from mailward.config import load_settings
from mailward.errors import ConfigError
from mailward.privileges import PrivilegeError, service_account
from real_parts import require


@pytest.fixture
def as_root():
    require(os.geteuid() == 0, "choosing a service user matters only to root")


def test_state_owned_by_root_keeps_root(as_root, tmp_path):
    assert service_account(load_settings(overrides={"state_dir": str(tmp_path)})) is None


def test_state_owned_by_a_service_user_is_run_as_that_user(as_root, tmp_path):
    nobody = pwd.getpwnam("nobody")
    os.chown(tmp_path, nobody.pw_uid, nobody.pw_gid)
    account = service_account(load_settings(overrides={"state_dir": str(tmp_path)}))
    assert (account.name, account.uid, account.gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)


def test_configured_milter_user_wins_and_must_exist(as_root, tmp_path):
    settings = load_settings(overrides={"state_dir": str(tmp_path / "new"), "milter": {"user": "nobody"}})
    assert service_account(settings).uid == pwd.getpwnam("nobody").pw_uid
    with pytest.raises(ConfigError, match="no such user 'no-such-user-x'"):  # refused where it is loaded
        load_settings(overrides={"state_dir": str(tmp_path), "milter": {"user": "no-such-user-x"}})
    gone = replace(settings, milter=replace(settings.milter, user="no-such-user-x"))  # deleted since the load
    with pytest.raises(PrivilegeError, match="does not exist"):
        service_account(gone)
