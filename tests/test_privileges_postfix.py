"""The CLI run as root beside a milter that runs as the service user: everything the CLI creates
belongs to that user, and the milter keeps scanning (never a tempfail for file ownership); a model it
cannot read leaves the last good one in use and raises an alert."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.postfix import wait_for
from harness.service import SERVICE_USER, interpreter_reachable, run_cli
from mailward.config import load_settings
from mailward.privileges import service_account
from support.mail import gtube_message, message

pytestmark = pytest.mark.postfix

TRAINING = Path(__file__).parent / "fixtures" / "training" / "layout"


@pytest.fixture
def base():
    path = Path(tempfile.mkdtemp(prefix="mailward-priv-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_root_cli_leaves_state_to_the_service_user_and_the_milter_keeps_scanning(postfix, service_user, base):
    from harness.milter import MilterProcess

    svc = service_user
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, svc.pw_uid, svc.pw_gid)
    common = (
        f'state_dir = "{state}"\n[policy.inbound]\nspam_action = "quarantine"\n'
        f"[model]\ncheck_interval = 0.5\n"
        f'[quarantine]\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\n'
    )
    milter_config = base / "milter.toml"
    log_path = base / "milter.log"
    milter_config.write_text(
        common + f'[milter]\nuser = "{SERVICE_USER}"\nsocket = "unix:{postfix.milter_socket}"\n'
        f"workers = 1\nmessage_deadline = 20.0\n"
        f'[logging]\nfile = "{log_path}"\nlevel = "info"\n'
    )
    # The service's log file exists and is the service user's (as logrotate's "create" leaves it): the
    # scanning processes, started after the drop, open it too.
    log_path.touch(mode=0o600)
    os.chown(log_path, svc.pw_uid, svc.pw_gid)
    cli_config = base / "cli.toml"  # no milter.user: the owner of state_dir decides
    cli_config.write_text(common)
    assert service_account(load_settings(str(cli_config))).uid == svc.pw_uid
    sets = base / "sets"
    shutil.copytree(TRAINING, sets)

    prefix = interpreter_reachable(base)
    m = MilterProcess(milter_config, postfix.milter_socket, log_path, prefix)
    m.start()
    try:
        mid, raw = gtube_message()
        assert postfix.send(raw)[0] == 250, log_path.read_text()[-3000:] + postfix.log()[-1500:]
        qid = m.event_where(lambda e: e["mailward"]["verdict"] == "quarantine")["mailward"]["quarantine_id"]

        # What an admin does with sudo in a week: train and promote, review and release, block.
        candidate = json.loads(run_cli(prefix, cli_config, "train", str(sets), "--json").stdout)["candidate"]
        run_cli(prefix, cli_config, "model", "promote", candidate, "--force")
        run_cli(prefix, cli_config, "quarantine", "label", qid, "spam")
        run_cli(prefix, cli_config, "quarantine", "release", qid)
        run_cli(prefix, cli_config, "block", "add", "sender", "spammer@example.net", "--reason", "test")
        assert postfix.delivered(mid) is not None

        foreign = [(str(p), p.stat().st_uid) for p in [state, *state.rglob("*")] if p.stat().st_uid != svc.pw_uid]
        assert foreign == []
        assert (state / "models").is_dir() and any((state / "models").rglob("spam.json"))

        # The milter, as the service user, picks up the promoted model and keeps delivering.
        assert wait_for(lambda: f"spam model {candidate}" in log_path.read_text(), 30), log_path.read_text()[-3000:]
        mid2, raw2 = message()
        assert postfix.send(raw2)[0] == 250
        assert postfix.delivered(mid2) is not None

        # A model directory the milter cannot read (what a root CLI without the drop left behind):
        # the last good model stays, an alert goes out, and mail still flows.
        models = state / "models"
        os.chown(models, 0, 0)
        os.chmod(models, 0o700)
        # The model is checked when mail is scanned, at most every check_interval: keep mail coming.
        for _ in range(10):
            mid3, raw3 = message()
            assert postfix.send(raw3)[0] == 250
            assert postfix.delivered(mid3) is not None
            if wait_for(lambda: "alert-model" in log_path.read_text(), 1):
                break
        assert "alert-model" in log_path.read_text()
        assert "spam model directory unreadable, keeping " + candidate in log_path.read_text()
        events = [e for e in m.events() if e["mailward"].get("verdict") in ("tempfail",)]
        assert events == []
    finally:
        m.stop()
