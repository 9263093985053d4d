"""Shared fixtures. Parts that need root and Debian packages skip locally when missing,
but fail under CI=true: a missing part must never pass as a green run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from real_parts import require

# Fixtures shared by several modules are registered here, once, instead of imported into each
# test module (an imported fixture is redefined by every test that requests it, and a
# session fixture imported into two modules runs twice).
pytest_plugins = ["support.stores", "support.unpack", "clamd_server", "support.incidents", "support.milter"]


# Logs whose tails a failing test's report shows: CI keeps the output, not the temporary files.
FAILURE_LOGS = pytest.StashKey[list[Path]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        logs = list(item.stash.get(FAILURE_LOGS, []))
        postfix = getattr(item, "funcargs", {}).get("postfix")
        if postfix is not None:
            logs.append(postfix.base / "postfix.log")
        for path in logs:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-30:]
                report.sections.append((f"last lines of {path}", "\n".join(tail)))
    return report


@pytest.fixture(scope="session")
def postfix():
    from harness.postfix import Postfix

    require(os.geteuid() == 0, "end-to-end tests run Postfix and need root")
    require(
        shutil.which("postfix") is not None and Path("/etc/postfix/master.cf").exists(),
        "Postfix is not installed (run the README's test command as root)",
    )
    import tempfile

    run_dir = Path(tempfile.mkdtemp(prefix="mailward-run-", dir="/tmp"))
    os.chmod(run_dir, 0o755)
    pf = Postfix.create(run_dir / "sock" / "milter.sock")
    pf.start()
    yield pf
    pf.destroy()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def milter(postfix, tmp_path, request):
    """Start a real mailward-milter for Postfix with extra TOML lines; stopped after the test."""
    from harness.milter import MilterProcess

    started: list[MilterProcess] = []
    request.node.stash[FAILURE_LOGS] = [tmp_path / "milter.log"]

    def start(extra_toml: str = "", workers: int = 1, milter_toml: str = "") -> MilterProcess:
        """``extra_toml`` goes before the [milter] table the harness writes; ``milter_toml`` into it."""
        state = tmp_path / "state"
        log_path = tmp_path / "milter.log"
        config = tmp_path / "mailward.toml"
        config.write_text(f"""\
state_dir = "{state}"
{extra_toml}

[milter]
socket = "unix:{postfix.milter_socket}"
workers = {workers}
message_deadline = 20.0
{milter_toml}

[logging]
file = "{log_path}"
level = "info"
""")
        proc = MilterProcess(config, postfix.milter_socket, log_path)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def service_user():
    """A system user for the milter to run as, shared by the tests that need one."""
    from harness.service import ensure_service_user, remove_service_user

    entry, created = ensure_service_user()
    yield entry
    if created:
        remove_service_user()
