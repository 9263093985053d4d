"""The model registry in PostgreSQL: one model for many milter hosts, no shared filesystem.

With ``quarantine.backend = "postgresql"`` every host already reaches one
database; keeping the registry there too means a promotion made on any host
(``mailward model promote``) is seen by every milter's loader at its next check,
with nothing to copy or mount. Three tables:

* ``model_versions``: one row per version, its sidecar (JSON text) and the
  payload's sha256 and size;
* ``model_chunks``: the payload (an ``.npz`` of plain arrays, never a pickle)
  as ``bytea`` chunks, like ``quarantine_chunks``, so no statement carries a
  whole large model;
* ``model_promotions``: the history, append-only. The live version is the
  version of its last row, so a promotion or rollback is one ``INSERT``: every
  reader sees the old live model or the new one.

A loaded payload is checked exactly as a file would be: the sidecar's kind,
format and feature hashing, the sha256 of the reassembled bytes, and the
arrays' names, types, shapes and sizes (:func:`.artifact.decode_artifact`).
Database access control replaces the file-ownership check: who can write these
tables can choose the model, as who can write the model directory can.

Connections, transactions and the schema's version are the database layer's
(:mod:`mailward.db`); its migrations take an advisory lock, so hosts starting
at once do not race on ``CREATE TABLE IF NOT EXISTS``; they only ever add tables.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..db import Database, Migration, PostgresDsn, Transaction
from ..errors import ArtifactError
from .artifact import TrainedModel, decode_artifact, encode_artifact, parse_sidecar

_SCHEMA_LOCK = 0x4D57_4D00  # "MWM\0": advisory lock key for creating the registry's tables
_PROMOTION_LOCK = 0x4D57_4D01  # serialises promotions, so each records the version it replaced
CHUNK = 1 << 20  # payload bytes per row
_SCHEMA = (  # migration 1: the schema before versions were recorded
    """CREATE TABLE IF NOT EXISTS model_versions (
        version TEXT PRIMARY KEY,
        created DOUBLE PRECISION NOT NULL,
        sidecar TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS model_chunks (
        version TEXT NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (version, seq))""",
    """CREATE TABLE IF NOT EXISTS model_promotions (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        action TEXT NOT NULL,
        version TEXT NOT NULL REFERENCES model_versions (version),
        previous TEXT NOT NULL,
        actor TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        evaluation TEXT NOT NULL)""",
)
MIGRATIONS = (Migration(1, _SCHEMA),)


@dataclass(frozen=True)
class Live:
    """Which promotion is in force: a new promotion (even of the same version) is a new ``seq``."""

    seq: int
    version: str


@dataclass(frozen=True)
class StoredVersion:
    version: str
    created: float
    sidecar: str  # JSON text, checked when parsed


@dataclass(frozen=True)
class StoredPromotion:
    action: str
    version: str
    previous: str
    actor: str
    at: float
    evaluation: dict[str, Any]


class RegistryUnavailable(ArtifactError):
    """The database did not answer or failed: worth trying again later, unlike a refused model."""


class ModelDatabase:
    """The registry's tables behind one DSN. Not thread-safe: one user at a time.

    ``keep_open`` holds one connection across calls (the milter's loader checks
    every few seconds); otherwise each call connects and disconnects (the CLI).
    """

    def __init__(self, dsn: str, timeout: float = 10.0, keep_open: bool = False) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.keep_open = keep_open
        self.database = Database(
            PostgresDsn(dsn, timeout),
            label=self.where,
            error=RegistryUnavailable,
            timeout=timeout,
            keep_idle=keep_open,
        )

    @property
    def where(self) -> str:
        return "model registry in PostgreSQL"

    def close(self) -> None:
        self.database.close()

    def create_schema(self) -> None:
        self.database.migrate("models", MIGRATIONS, lock=_SCHEMA_LOCK)

    # -- reads (the loader) ----------------------------------------------------------------------

    def live(self) -> Live | None:
        """The promotion in force, or None when nothing was ever promoted (or no registry exists)."""
        try:
            return self._live()
        except RegistryUnavailable:
            if not self.keep_open:
                raise
            return self._live()  # the server may have ended the kept session: once more, anew

    def _live(self) -> Live | None:
        try:
            with self._tx() as tx:
                row = tx.execute("SELECT seq, version FROM model_promotions ORDER BY seq DESC LIMIT 1").fetchone()
        except RegistryUnavailable as exc:
            if self.database.missing_table(exc):
                return None
            raise
        return Live(int(row[0]), str(row[1])) if row else None

    def load(self, version: str) -> TrainedModel:
        """The version's model, its bytes verified against the sidecar (sha256) and decoded as arrays."""
        where = f"{self.where}: version {version}"
        with self._tx() as conn:
            row = conn.execute(
                "SELECT sidecar, sha256, size FROM model_versions WHERE version = ?", (version,)
            ).fetchone()
            if row is None:
                raise ArtifactError(f"{where}: no such version")
            chunks = conn.execute(
                "SELECT data FROM model_chunks WHERE version = ? ORDER BY seq", (version,), binary=True
            ).fetchall()
        meta = parse_sidecar(row[0], where)
        data = b"".join(bytes(chunk[0]) for chunk in chunks)
        if len(data) != int(row[2]) or meta.get("sha256") != row[1] or str(meta["model_version"]) != version:
            raise ArtifactError(
                f"{where}: stored payload ({len(data)} bytes) does not match its sidecar; refusing a corrupt model"
            )
        return decode_artifact(meta, data, where)

    # -- writes (the registry) -------------------------------------------------------------------

    def add(self, model: TrainedModel, version: str = "") -> TrainedModel:
        """Store ``model`` as a version (not live); storing the same model again changes nothing.

        The version is derived from the payload unless given (an imported model keeps its own).
        """
        sidecar, data = encode_artifact(model, version=version)
        version = str(sidecar["model_version"])
        with self._tx() as conn:
            added = conn.execute(
                "INSERT INTO model_versions (version, created, sidecar, sha256, size) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (version) DO NOTHING RETURNING version",
                (version, time.time(), json.dumps(sidecar, sort_keys=True), sidecar["sha256"], len(data)),
            ).fetchone()
            if added is not None:
                conn.executemany(
                    "INSERT INTO model_chunks (version, seq, data) VALUES (?, ?, ?)",
                    [
                        (version, seq, data[start : start + CHUNK])
                        for seq, start in enumerate(range(0, len(data), CHUNK))
                    ],
                )
        return TrainedModel(model.counts, model.features, model.combiner, model.training_data, version)

    def has(self, version: str) -> bool:
        with self._tx() as conn:
            return conn.execute("SELECT 1 FROM model_versions WHERE version = ?", (version,)).fetchone() is not None

    def promote(
        self, version: str, action: str, actor: str, evaluation: dict[str, Any], at: float, shipped: str = ""
    ) -> str:
        """Make ``version`` live; returns the version it replaced (``shipped`` before any promotion)."""
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_PROMOTION_LOCK,))
            if conn.execute("SELECT 1 FROM model_versions WHERE version = ?", (version,)).fetchone() is None:
                raise ArtifactError(f"{self.where}: no model version {version}")
            row = conn.execute("SELECT version FROM model_promotions ORDER BY seq DESC LIMIT 1").fetchone()
            previous = str(row[0]) if row else shipped
            conn.execute(
                "INSERT INTO model_promotions (action, version, previous, actor, at, evaluation) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (action, version, previous, actor, at, json.dumps(evaluation, sort_keys=True)),
            )
        return previous

    def versions(self) -> list[StoredVersion]:
        with self._tx() as conn:
            rows = conn.execute("SELECT version, created, sidecar FROM model_versions ORDER BY created").fetchall()
        return [StoredVersion(str(v), float(c), str(s)) for v, c, s in rows]

    def history(self) -> list[StoredPromotion]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT action, version, previous, actor, at, evaluation FROM model_promotions ORDER BY seq"
            ).fetchall()
        return [
            StoredPromotion(str(a), str(v), str(p), str(who), float(at), json.loads(e)) for a, v, p, who, at, e in rows
        ]

    def _tx(self) -> AbstractContextManager[Transaction]:
        """A transaction on a durable session; database failures are :class:`RegistryUnavailable`."""
        return self.database.transaction()
