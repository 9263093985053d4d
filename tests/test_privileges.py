"""Whom a root `mailward` becomes (the drop itself runs in real processes: test_privileges_postfix.py)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from harness.service import interpreter_reachable, run_cli
from mailward.config import load_settings
from mailward.errors import ConfigError
from mailward.privileges import PrivilegeError, service_account
from mailward.quarantine import open_store
from mailward.source import MessageSource
from real_parts import require
from support.incidents import failed_line
from support.mail import plain_mail
from support.quarantine import envelope, spam_case


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


def test_a_root_cli_records_the_admin_not_the_service_user_it_becomes(as_root, service_user, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="mailward-actor-", dir="/tmp"))  # a service user can walk to it
    try:
        os.chmod(base, 0o755)
        state, config = base / "state", base / "cli.toml"
        config.write_text(f'state_dir = "{state}"\n')
        with open_store(load_settings(str(config))) as store:
            qid = store.put(MessageSource.of(plain_mail()), envelope(), *spam_case())
        for path in [state, *state.rglob("*")]:  # the milter's state: the CLI drops to its owner
            os.chown(path, service_user.pw_uid, service_user.pw_gid)
        prefix = interpreter_reachable(base)

        for name in ("SSH_CONNECTION", "SSH_CLIENT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("SUDO_USER", "alice")  # sudo mailward ..., typed by alice
        run_cli(prefix, config, "quarantine", "label", qid, "spam")
        run_cli(prefix, config, "block", "add", "sender", "spammer@example.net", "--reason", "test")
        monkeypatch.delenv("SUDO_USER")  # root itself
        run_cli(prefix, config, "quarantine", "label", qid, "ham")

        history = [
            json.loads(line)
            for line in run_cli(prefix, config, "quarantine", "history", qid, "--json").stdout.splitlines()
        ]
        labels = [(e["actor"], e["origin"]) for e in history if e["action"] == "label"]
        assert labels == [("alice", "sudo by alice"), ("root", "")]
        [block] = [
            json.loads(line) for line in run_cli(prefix, config, "block", "history", "--json").stdout.splitlines()
        ]
        assert (block["actor"], block["origin"]) == ("alice", "sudo by alice")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def log_reader(as_root):
    """A service user in a group that may read the mail log (as ``adm`` may on Debian): name, group."""
    require(shutil.which("useradd") is not None and shutil.which("groupadd") is not None, "needs useradd")
    user, group = "mailward-logreader", "mailward-maillog"
    subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            + ["--groups", group, user],
            check=True,
            capture_output=True,
        )
        yield pwd.getpwnam(user), group
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def test_a_root_cli_keeps_the_service_users_groups_and_none_of_roots(log_reader):
    account, group = log_reader
    base = Path(tempfile.mkdtemp(prefix="mailward-groups-", dir="/tmp"))  # a service user can walk to it
    try:
        os.chmod(base, 0o755)
        state, config = base / "state", base / "cli.toml"
        state.mkdir(mode=0o700)
        os.chown(state, account.pw_uid, account.pw_gid)  # the CLI drops to the owner of state_dir
        config.write_text(f'state_dir = "{state}"\n')
        failures = "".join(failed_line("203.0.113.5", n) + "\n" for n in range(10))
        mail_log, roots_log = base / "mail.log", base / "root.log"
        for path, gid in ((mail_log, grp.getgrnam(group).gr_gid), (roots_log, 0)):
            path.write_text(failures)
            os.chown(path, 0, gid)
            os.chmod(path, 0o640)
        prefix = interpreter_reachable(base)

        run_cli(prefix, config, "watch-auth", "--log", str(mail_log), "--once")  # through its group
        assert "203.0.113.5" in run_cli(prefix, config, "block", "list", "--kind", "address").stdout
        denied = run_cli(prefix, config, "watch-auth", "--log", str(roots_log), "--once", check=False)
        assert denied.returncode == 1 and "Permission denied" in denied.stderr  # root's group 0 is not kept
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_milter_keeps_its_service_users_groups_and_none_of_roots(log_reader, tmp_path):
    """With ``follow_auth_log`` the milter reads the mail log through the service user's group (``adm``
    on Debian); it dropped every supplementary group, so it could never read it."""
    from mailward.config import load_settings
    from mailward.milter.daemon import _drop_privileges

    account, group = log_reader
    settings = load_settings(None, {"state_dir": str(tmp_path), "milter": {"user": account.pw_name}})
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the drop cannot be undone: in a child
        try:
            _drop_privileges(settings)
            os.write(write, json.dumps([os.getuid(), os.getgid(), sorted(os.getgroups())]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        uid, gid, groups = json.loads(answer.read())
    os.waitpid(child, 0)
    assert (uid, gid) == (account.pw_uid, account.pw_gid)
    assert grp.getgrnam(group).gr_gid in groups and 0 not in groups


def test_check_before_the_first_start_as_root_reports_no_false_store_problem(service_user):
    """The state directory does not exist yet, under a root-owned parent: a start creates it for the
    service user. The check ran as that user and failed ("cannot prepare private directory")."""
    import sys

    base = Path(tempfile.mkdtemp(prefix="mailward-firstcheck-", dir="/tmp"))  # a service user can walk to it
    try:
        os.chmod(base, 0o755)
        (base / "lib").mkdir(mode=0o755)
        state, config = base / "lib" / "mailward", base / "m.toml"
        config.write_text(
            f'state_dir = "{state}"\n[milter]\nsocket = "unix:{base / "sock" / "milter.sock"}"\nworkers = 0\n'
            f'user = "{service_user.pw_name}"\n[reputation]\nenabled = false\n'
        )
        stand_ins = set(Path(tempfile.gettempdir()).glob("mailward-check-*"))
        checked = subprocess.run(
            [*interpreter_reachable(base), sys.executable, "-m", "mailward.milter.daemon", "--config", str(config)]
            + ["--check"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 0, checked.stderr
        assert f"state_dir {state}, created at start" in checked.stdout
        assert not state.exists()  # a dry run: the stores were checked in a stand-in, now gone
        assert set(Path(tempfile.gettempdir()).glob("mailward-check-*")) == stand_ins
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_as_the_service_user_names_what_it_could_not_create(service_user):
    """Not root: a missing state directory under a directory it cannot write, and a log file in one,
    are each a problem line (a start would fail on them), and nothing is created."""
    import sys

    base = Path(tempfile.mkdtemp(prefix="mailward-usercheck-", dir="/tmp"))  # a service user can walk to it
    try:
        os.chmod(base, 0o755)
        (base / "root-only").mkdir(mode=0o755)  # root's: the service user may not write here
        state, log_file, config = base / "root-only" / "state", base / "root-only" / "m.log", base / "m.toml"
        config.write_text(
            f'state_dir = "{state}"\n[milter]\nsocket = "unix:{base / "sock" / "milter.sock"}"\nworkers = 0\n'
            f'[reputation]\nenabled = false\n[logging]\nfile = "{log_file}"\n'
        )
        as_user = ("setpriv", f"--reuid={service_user.pw_uid}", f"--regid={service_user.pw_gid}", "--clear-groups")
        checked = subprocess.run(
            [*interpreter_reachable(base), *as_user, sys.executable, "-m", "mailward.milter.daemon"]
            + ["--config", str(config), "--check"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 1, checked.stderr
        assert f"logging.file {log_file}: {base / 'root-only'} is not writable by this user" in checked.stderr
        assert f"state_dir {state} does not exist and {base / 'root-only'} is not writable" in checked.stderr
        assert not state.exists() and not log_file.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
