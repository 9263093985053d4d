"""Many hosts, one model: the registry in PostgreSQL, promoted on one host and loaded on every other."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailward.cli.main import main
from mailward.config import load_settings
from mailward.errors import ArtifactError
from mailward.models.artifact import SHIPPED_DIR, SIDECAR, load_artifact
from mailward.models.database import ModelDatabase
from mailward.models.loader import DatabaseSource, ModelLoader
from mailward.training.registry import SHIPPED, DatabaseRegistry, Registry, RegistryError
from support.models import small_model
from support.quarantine import FakeClock
from support.training import FIXTURES, config, run, run_json


@pytest.fixture(scope="module")
def models():
    """Two different trained models (small feature width: quick to train and store)."""
    return small_model(copies=3), small_model(copies=4)


@pytest.fixture
def registry(fresh_pg_dsn) -> DatabaseRegistry:
    return DatabaseRegistry(ModelDatabase(fresh_pg_dsn), shipped_dir=None)


def loader_of(dsn: str, clock: FakeClock, shipped: bool = False, **kw) -> ModelLoader:
    source = DatabaseSource(ModelDatabase(dsn, timeout=5, keep_open=True))
    return ModelLoader("/nonexistent", shipped=shipped, check_interval=1.0, clock=clock, source=source, **kw)


def checked(loader: ModelLoader, clock: FakeClock) -> str:
    """The version after the loader's next check has finished (it runs off the scanning thread)."""
    clock.now += 2
    loader.current()
    loader.settle(timeout=30)
    return loader.current().version


def test_promotion_and_rollback_reach_a_running_loader(registry, models, fresh_pg_dsn):
    first, second = (registry.add(m) for m in models)
    assert registry.add(models[0]).version == first.version  # the same model once
    assert [v.version for v in registry.versions()] == [first.version, second.version]
    registry.promote(first.version, "ann", {"test": True})
    clock = FakeClock()
    loader = loader_of(fresh_pg_dsn, clock)
    assert loader.current().version == first.version

    record = registry.promote(second.version, "ann", {"test": True})
    assert record.previous == first.version
    assert loader.current().version == first.version  # not before its check
    assert checked(loader, clock) == second.version
    assert registry.live_version() == second.version and registry.live().version == second.version

    assert registry.rollback_target() == first.version
    registry.promote(first.version, "bob", {"rollback": True}, action="rollback")
    assert checked(loader, clock) == first.version
    assert [(h.action, h.version, h.actor) for h in registry.history()] == [
        ("promote", first.version, "ann"),
        ("promote", second.version, "ann"),
        ("rollback", first.version, "bob"),
    ]
    assert [v.live for v in registry.versions()] == [True, False]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback_target()
    with pytest.raises(RegistryError, match="no model version"):
        registry.promote("nb-000000000000", "ann", {})


def test_a_corrupt_stored_payload_is_refused_and_the_loader_keeps_its_model(registry, models, fresh_pg_dsn):
    first, second = (registry.add(m) for m in models)
    registry.promote(first.version, "ann", {})
    refusals: list[str] = []
    clock = FakeClock()
    loader = loader_of(fresh_pg_dsn, clock, on_refusal=refusals.append)
    registry.promote(second.version, "ann", {})
    import psycopg

    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:  # one flipped byte in the stored payload
        conn.execute(
            "UPDATE model_chunks SET data = overlay(data placing '\\x00'::bytea from 40 for 1) "
            "WHERE version = %s AND seq = 0",
            (second.version,),
        )
    assert checked(loader, clock) == first.version
    assert len(refusals) == 1 and "sha256" in refusals[0]
    with pytest.raises(ArtifactError, match="sha256"):
        registry.load(second.version)


def test_an_outage_keeps_the_model_logs_once_and_a_later_promotion_still_arrives(
    registry, models, fresh_pg_dsn, caplog
):
    """The outage is real: the host's database role loses its login and its session is ended."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    first, second = (registry.add(m) for m in models)
    registry.promote(first.version, "ann", {})
    role = f"host_{secrets.token_hex(4)}"
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as admin:
        schema = admin.execute("SELECT current_schema()").fetchone()[0]
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        clock = FakeClock()
        loader = loader_of(make_conninfo(fresh_pg_dsn, user=role), clock)
        assert loader.current().version == first.version
        admin.execute(f"ALTER ROLE {role} NOLOGIN")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        with caplog.at_level(logging.INFO, logger="mailward.models.loader"):
            for _ in range(3):
                assert checked(loader, clock) == first.version
            assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
            registry.promote(second.version, "ann", {})
            admin.execute(f"ALTER ROLE {role} LOGIN")
            assert checked(loader, clock) == second.version
        loader.source.database.close()  # type: ignore[attr-defined]
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def test_an_unreachable_database_falls_back_to_the_shipped_model(tmp_path):
    dsn = "host=127.0.0.1 port=9 user=nobody dbname=none connect_timeout=2"  # discard port: nothing listens
    refusals: list[str] = []
    loader = loader_of(dsn, FakeClock(), shipped=True, on_refusal=refusals.append)
    shipped = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR)
    assert loader.current().version == shipped.version
    assert refusals and "cannot connect" in refusals[0]
    with pytest.raises(ArtifactError, match="cannot connect"):
        loader_of(dsn, FakeClock(), shipped=False)


def test_the_shipped_model_is_kept_as_a_version_before_it_is_rolled_back_to(fresh_pg_dsn, models):
    registry = DatabaseRegistry(ModelDatabase(fresh_pg_dsn), shipped_dir=SHIPPED_DIR)
    assert registry.live_version() == SHIPPED
    candidate = registry.add(models[0])
    registry.promote(candidate.version, "ann", {})
    shipped = registry.keep_shipped()
    assert shipped in [v.version for v in registry.versions()]
    registry.promote(SHIPPED, "ann", {})
    assert registry.live_version() == shipped == registry.live().version


def test_the_first_promotion_over_the_shipped_model_can_be_rolled_back(fresh_pg_dsn, models, tmp_path):
    from mailward.models.artifact import save_artifact

    shipped = save_artifact(models[1], tmp_path / "shipped")
    registry = DatabaseRegistry(ModelDatabase(fresh_pg_dsn), shipped_dir=tmp_path / "shipped")
    candidate = registry.add(models[0])
    assert registry.promote(candidate.version, "ann", {}).previous == shipped.version
    assert registry.rollback_target() == shipped.version
    registry.promote(registry.rollback_target(), "ann", {"rollback": True}, action="rollback")
    assert registry.live().version == shipped.version


def test_schema_creation_by_hosts_starting_at_once(fresh_pg_dsn):
    """Each thread has its own connection, as each host would: the database sees them race."""
    hosts = [ModelDatabase(fresh_pg_dsn) for _ in range(4)]
    ready = threading.Barrier(len(hosts))
    failures: list[BaseException] = []

    def start(database: ModelDatabase) -> None:
        ready.wait()
        try:
            database.create_schema()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    ModelDatabase(fresh_pg_dsn).create_schema()  # and again: idempotent
    assert ModelDatabase(fresh_pg_dsn).live() is None


HOST = textwrap.dedent("""
    # One milter host's scanning stack, built as the daemon builds it; scores a message per input line.
    import sys
    from mailward.config import load_settings
    from mailward.envelope import Envelope
    from mailward.runtime import build_inspector

    inspector = build_inspector(load_settings(sys.argv[1]))
    raw = b"From: a@example.org\\r\\nTo: b@example.org\\r\\nSubject: cheap pills\\r\\n\\r\\nbuy cheap pills now\\r\\n"
    for line in sys.stdin:
        evidence = inspector.inspect(raw, Envelope(mail_from="a@example.org", recipients=("b@example.org",)))
        print(evidence.spam.model_version, flush=True)
""")


class Host:
    """A milter host in a process of its own, with its own state directory and the shared database."""

    def __init__(self, tmp_path: Path, name: str, dsn: str):
        self.state = tmp_path / name / "state"
        self.config = tmp_path / name / "mailward.toml"
        self.config.parent.mkdir(parents=True)
        self.config.write_text(
            f'state_dir = "{self.state}"\n'
            f'[quarantine]\nbackend = "postgresql"\ndsn = {json.dumps(dsn)}\n'
            f"[model]\ncheck_interval = 0.2\n[reputation]\nenabled = false\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOST, str(self.config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def scan(self) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("scan\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def scans_with(self, version: str, timeout: float = 30.0) -> bool:
        """Whether the host scores with ``version`` within ``timeout`` (each scan may start its check)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scan() == version:
                return True
            time.sleep(0.05)
        return False

    def cli(self, *argv: str) -> tuple[int, str]:
        """``mailward ARGV`` with this host's configuration: exit status and standard output."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--config", str(self.config), *argv])
        return code, out.getvalue()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc.stdout.close()


def test_a_promotion_on_host_a_is_scored_with_on_host_b(tmp_path, fresh_pg_dsn, models):
    a, b = Host(tmp_path, "a", fresh_pg_dsn), Host(tmp_path, "b", fresh_pg_dsn)
    registry = Registry.of(load_settings(a.config))
    assert isinstance(registry, DatabaseRegistry)
    first, second = (registry.add(m) for m in models)
    shipped = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR).version
    try:
        a.start()
        b.start()
        assert a.scan() == b.scan() == shipped  # nothing promoted yet
        assert a.cli("model", "promote", first.version, "--force")[0] == 0
        assert b.scans_with(first.version) and a.scans_with(first.version)
        assert a.cli("model", "promote", second.version, "--force")[0] == 0
        assert b.scans_with(second.version)
        code, out = b.cli("model", "list", "--json")
        listed = json.loads(out)
        assert code == 0 and listed["live"] == second.version
        assert [h["action"] for h in listed["history"]] == ["promote", "promote"]

        code, out = a.cli("model", "rollback")
        assert code == 0 and f"rolled back to {first.version}" in out
        assert b.scans_with(first.version)
        assert not (b.state / "models" / SIDECAR).exists()  # nothing went through B's filesystem
    finally:
        a.stop()
        b.stop()


def test_train_update_compare_promote_and_roll_back_on_the_database_registry(tmp_path, fresh_pg_dsn):
    """The training commands work unchanged on the database registry."""
    state = tmp_path / "state"
    config(state, f'[quarantine]\nbackend = "postgresql"\ndsn = {json.dumps(fresh_pg_dsn)}\n')
    layout, more = str(FIXTURES / "layout"), str(FIXTURES / "reports-spam.mbox")
    assert run_json(state, "model", "list")["live"] == ""
    first = run_json(state, "train", layout)["candidate"]
    assert run(state, "model", "promote", first, "--on", layout)[0] == 0
    update = run_json(state, "train", "--update", more)
    second = update["candidate"]
    assert update["learned"] == 3 and not update["rebuilt"]  # the three reports in the mbox
    assert run_json(state, "model", "compare", second, layout)["live"]["model"] == first
    assert run(state, "model", "promote", second, "--force")[0] == 0
    code, out = run(state, "model", "rollback")
    assert code == 0 and f"rolled back to {first}" in out
    listing = run_json(state, "model", "list")
    assert listing["live"] == first and {first, second} <= {v["version"] for v in listing["versions"]}
    assert not (state / "models").exists()  # nothing in the model directory
