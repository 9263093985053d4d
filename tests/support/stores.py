"""Quarantine test fixtures, registered for every module by ``tests/conftest.py``.

``store`` runs every contract test once per backend: SQLite in a temporary
directory and PostgreSQL in a fresh schema of a throwaway cluster
(mandatory when CI=true).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from real_parts import require
from support.quarantine import FakeClock, SmtpSink

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_dsn():
    """A throwaway PostgreSQL cluster for the whole session (mandatory when CI=true)."""
    from pg_server import PostgresServer, binaries

    require(binaries() is not None, "PostgreSQL binaries not installed (apt package postgresql)")
    server = PostgresServer()
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def fresh_pg_dsn(pg_dsn):
    """A new empty schema in the session cluster, so tests never see each other's rows."""
    from pg_server import create_database

    return create_database(pg_dsn)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_factory(request, backend, tmp_path, clock):
    """Opens stores of the parametrised backend over one shared location (as several processes would)."""
    opened = []
    dsn = request.getfixturevalue("fresh_pg_dsn") if backend == "postgresql" else ""

    def make(**kwargs):
        if backend == "postgresql":
            from mailward.quarantine.postgres import PostgresStore

            s = PostgresStore(dsn, clock=kwargs.get("clock", clock))
        else:
            from mailward.quarantine.sqlite import SqliteStore

            s = SqliteStore(Path(tmp_path) / "quarantine", clock=kwargs.get("clock", clock))
        opened.append(s)
        return s

    make.backend = backend
    make.dsn = dsn
    make.directory = Path(tmp_path) / "quarantine"
    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory):
    return store_factory()


@pytest.fixture
def smtp_sink():
    with SmtpSink() as sink:
        yield sink
