"""The model registry in the model directory: candidates, the live model, promotion and rollback.

Layout of ``settings.model_dir`` (the directory the milter's loader watches)::

    spam.json -> versions/nb-1a2b3c4d5e6f/spam.json     the live model (a relative symlink)
    versions/<version>/spam.json, spam-<sha>.npz         every model trained or ever live
    promotions.jsonl                                     who made what live, when, on which evaluation

The loader reads ``spam.json`` through the link (both files stay inside the model
directory, as it requires) and notices a promotion because the sidecar it stats
is then another file. Promotion writes a new link beside the old one and renames
it over ``spam.json``: one atomic rename, so every reader sees the old model or
the new one. A ``spam.json`` that is a plain file (written by hand or by
``build_default``) is first copied into ``versions/`` so that it can be rolled back to.
Every model is loaded as the milter would load it: only from files owned by root
or the service user that nobody else can write.

With the PostgreSQL backend the registry is :class:`DatabaseRegistry` instead:
the same operations on the tables of :mod:`mailward.models.database`, so a
promotion made on one host is what every milter host's loader loads next.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..dbfile import fsync_directory
from ..errors import ArtifactError, MailwardError
from ..models.artifact import (
    MODEL_DIR_MODE,
    MODEL_FILE_MODE,
    SHIPPED_DIR,
    SIDECAR,
    TrainedModel,
    load_artifact,
    parse_sidecar,
    read_sidecar,
    save_artifact,
)
from ..models.database import ModelDatabase
from ..trust import TrustedOwners

VERSIONS = "versions"
HISTORY = "promotions.jsonl"
SHIPPED = "shipped"  # how history and listings name the model shipped in the package


class RegistryError(MailwardError):
    """No such version, or nothing to roll back to."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: float
    class_counts: dict[str, Any]
    training_data: dict[str, Any]
    live: bool
    refused: str = ""  # why the loader would refuse it (e.g. a format-1 pickle): listed, never loaded


@dataclass(frozen=True)
class Promotion:
    """One line of the promotion history."""

    action: str  # promote | rollback
    version: str
    previous: str  # the version live before ("" if none)
    actor: str
    at: float
    evaluation: dict[str, Any]  # the check it passed (or "forced")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    """``shipped_dir`` None: the package's model is never live (``model.shipped_model = false``)."""

    def __init__(
        self, model_dir: str | Path, shipped_dir: Path | None = SHIPPED_DIR, owners: TrustedOwners | None = None
    ):
        self.root = Path(model_dir)
        self.owners = owners or TrustedOwners.of()
        self.versions_dir = self.root / VERSIONS
        self.live_link = self.root / SIDECAR
        self.shipped_dir = shipped_dir

    @classmethod
    def of(cls, settings: Settings) -> Registry | DatabaseRegistry:
        """The configured registry: in the database with the PostgreSQL backend, else in the model directory."""
        shipped_dir = SHIPPED_DIR if settings.model.shipped_model else None
        owners = TrustedOwners.of(settings.milter.user)
        if settings.quarantine.backend == "postgresql":
            return DatabaseRegistry(
                ModelDatabase(settings.quarantine.dsn, settings.quarantine.write_timeout), shipped_dir, owners
            )
        return cls(settings.model_dir, shipped_dir, owners)

    # -- candidates ------------------------------------------------------------------------------

    def add(self, model: TrainedModel) -> TrainedModel:
        """Save a trained model as a candidate version (not live); returns it with its version."""
        self._make_dirs()
        staging = Path(tempfile.mkdtemp(prefix=".candidate-", dir=self.versions_dir))
        try:
            saved = save_artifact(model, staging)
            target = self.versions_dir / saved.version
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / SIDECAR).exists():  # not merely the same model saved before
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return saved

    def load(self, version: str) -> TrainedModel:
        if version == SHIPPED and self.shipped_dir is not None and self._has_shipped():
            return load_artifact(self.shipped_dir / SIDECAR, self.shipped_dir, self.owners)
        return load_artifact(self._sidecar(version), self.root, self.owners)

    def keep_shipped(self) -> str:
        """Copy the shipped model into ``versions/`` (a base must outlive package upgrades); its version."""
        if self.shipped_dir is None or not self._has_shipped():
            raise RegistryError("no shipped model (model.shipped_model = false, or none installed)")
        return self._import(self.shipped_dir / SIDECAR, self.shipped_dir)

    def keep_live(self) -> str:
        """The live model's version, copied into ``versions/`` if it is not there yet (shipped, hand-placed)."""
        with self._lock():
            if self.live_link.exists():
                return self._register_live()
        return self.keep_shipped()

    def versions(self) -> list[VersionInfo]:
        live = self.live_version()
        out = []
        for sidecar in sorted(self.versions_dir.glob(f"*/{SIDECAR}")):
            try:
                meta = read_sidecar(sidecar)
            except ArtifactError as exc:
                out.append(VersionInfo(sidecar.parent.name, sidecar.stat().st_mtime, {}, {}, False, str(exc)))
                continue
            out.append(
                VersionInfo(
                    sidecar.parent.name,
                    sidecar.stat().st_mtime,
                    meta.get("class_counts", {}),
                    meta.get("training_data", {}),
                    sidecar.parent.name == live,
                )
            )
        return sorted(out, key=lambda v: v.created)

    # -- the live model --------------------------------------------------------------------------

    def live_version(self) -> str:
        """The version the milter loads: from the link, a plain sidecar, or ``shipped`` ("" = none)."""
        if self.live_link.is_symlink() or self.live_link.exists():
            try:
                return str(read_sidecar(self.live_link.resolve())["model_version"])
            except ArtifactError:
                return ""
        return SHIPPED if self._has_shipped() else ""

    def live(self) -> TrainedModel:
        """The live model as the milter's loader picks it."""
        if self.live_link.exists():
            return load_artifact(self.live_link, self.root, self.owners)
        if self._has_shipped():
            return self.load(SHIPPED)
        raise ArtifactError(f"{self.live_link}: no live spam model")

    def promote(self, version: str, actor: str, evaluation: dict[str, Any], action: str = "promote") -> Promotion:
        """Make ``version`` live with one atomic rename, and record it."""
        with self._lock():
            previous = self._register_live()
            if version == SHIPPED:
                version = self.keep_shipped()
            sidecar = self._sidecar(version)
            load_artifact(sidecar, self.root, self.owners)  # never link a model the loader would refuse
            link = self.root / f".{SIDECAR}.{os.getpid()}.link"
            link.unlink(missing_ok=True)
            os.symlink(sidecar.relative_to(self.root), link)
            os.replace(link, self.live_link)
            fsync_directory(self.root)
            record = Promotion(action, version, previous, actor, time.time(), evaluation)
            with open(_private(self.root / HISTORY, os.O_APPEND), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record.as_dict(), sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return record

    def rollback_target(self) -> str:
        """The version that was live before the current one was promoted."""
        return _rollback_target(self.live_version(), self.history(), str(self.root))

    def history(self) -> list[Promotion]:
        try:
            lines = (self.root / HISTORY).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        history = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                history.append(Promotion(**json.loads(line)))
            except (ValueError, TypeError) as exc:  # an edited or torn line: say where, never a traceback
                raise RegistryError(f"{self.root / HISTORY}:{number}: not a promotion record ({exc})") from None
        return history

    # -- internals -------------------------------------------------------------------------------

    def _make_dirs(self) -> None:
        """The root and ``versions/`` with modes the loader accepts, whatever the umask."""
        for directory in (self.root, self.versions_dir):
            directory.mkdir(mode=MODEL_DIR_MODE, parents=True, exist_ok=True)

    def _has_shipped(self) -> bool:
        return self.shipped_dir is not None and (self.shipped_dir / SIDECAR).exists()

    def _sidecar(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"not a model version: {version!r}")
        sidecar = self.versions_dir / version / SIDECAR
        if not sidecar.exists():
            raise RegistryError(f"{self.root}: no model version {version} (see `mailward model list`)")
        return sidecar

    def _register_live(self) -> str:
        """The live version's name, copying a live model that is not in ``versions/`` into it
        (the shipped one too: the first promotion must be one a rollback can undo)."""
        if self.live_link.is_symlink():
            return self.live_version()
        if self.live_link.exists():
            return self._import(self.live_link, self.root)
        return self.keep_shipped() if self._has_shipped() else ""

    def _import(self, sidecar: Path, root: Path) -> str:
        model = load_artifact(sidecar, root, self.owners)
        target = self.versions_dir / model.version
        if not target.exists():
            meta = read_sidecar(sidecar)
            self._make_dirs()
            staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.versions_dir))
            try:
                for source, copy in (
                    (sidecar.resolve().parent / meta["artifact"], meta["artifact"]),
                    (sidecar, SIDECAR),
                ):
                    shutil.copy2(source, staging / copy)
                    os.chmod(staging / copy, MODEL_FILE_MODE)  # the shipped model's are readable by all
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return model.version

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(mode=MODEL_DIR_MODE, parents=True, exist_ok=True)
        with open(_private(self.root / ".registry.lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


class DatabaseRegistry:
    """The registry in PostgreSQL (``quarantine.backend = "postgresql"``): what :class:`Registry`
    does, for every host at once. The live version is the last promotion's; nothing is linked."""

    def __init__(
        self, database: ModelDatabase, shipped_dir: Path | None = SHIPPED_DIR, owners: TrustedOwners | None = None
    ) -> None:
        self.database = database
        self.shipped_dir = shipped_dir
        self.owners = owners or TrustedOwners.of()
        self.versions_dir = database.where  # where candidates are saved, as messages name it
        database.create_schema()

    def add(self, model: TrainedModel) -> TrainedModel:
        """Save a trained model as a candidate version (not live); returns it with its version."""
        return self.database.add(model)

    def load(self, version: str) -> TrainedModel:
        if version == SHIPPED and self._has_shipped():
            return self._shipped()
        if not version or not self.database.has(version):
            raise RegistryError(f"{self.database.where}: no model version {version} (see `mailward model list`)")
        return self.database.load(version)

    def keep_shipped(self) -> str:
        """Store the shipped model as a version (a base must outlive package upgrades); its version."""
        if not self._has_shipped():
            raise RegistryError("no shipped model (model.shipped_model = false, or none installed)")
        model = self._shipped()
        return self.database.add(model, version=model.version).version

    def keep_live(self) -> str:
        live = self.database.live()
        return live.version if live is not None else self.keep_shipped()

    def versions(self) -> list[VersionInfo]:
        live = self.live_version()
        out = []
        for stored in self.database.versions():
            try:
                meta = parse_sidecar(stored.sidecar, f"{self.database.where}: version {stored.version}")
            except ArtifactError as exc:
                out.append(VersionInfo(stored.version, stored.created, {}, {}, False, str(exc)))
                continue
            out.append(
                VersionInfo(
                    stored.version,
                    stored.created,
                    meta.get("class_counts", {}),
                    meta.get("training_data", {}),
                    stored.version == live,
                )
            )
        return out

    def live_version(self) -> str:
        live = self.database.live()
        if live is not None:
            return live.version
        return SHIPPED if self._has_shipped() else ""

    def live(self) -> TrainedModel:
        """The live model as every milter host's loader picks it."""
        live = self.database.live()
        if live is not None:
            return self.database.load(live.version)
        if self._has_shipped():
            return self._shipped()
        raise ArtifactError(f"{self.database.where}: no live spam model")

    def promote(self, version: str, actor: str, evaluation: dict[str, Any], action: str = "promote") -> Promotion:
        """Make ``version`` live on every host (one INSERT), and record it."""
        if version == SHIPPED:
            version = self.keep_shipped()
        self.load(version)  # never make live a model the loaders would refuse
        # Before the first promotion the shipped model is live: kept as a version, a rollback can return to it.
        shipped = self.keep_shipped() if self._has_shipped() and self.database.live() is None else ""
        at = time.time()
        previous = self.database.promote(version, action, actor, evaluation, at, shipped)
        return Promotion(action, version, previous, actor, at, evaluation)

    def rollback_target(self) -> str:
        return _rollback_target(self.live_version(), self.history(), self.database.where)

    def history(self) -> list[Promotion]:
        return [
            Promotion(p.action, p.version, p.previous, p.actor, p.at, p.evaluation) for p in self.database.history()
        ]

    def _has_shipped(self) -> bool:
        return self.shipped_dir is not None and (self.shipped_dir / SIDECAR).exists()

    def _shipped(self) -> TrainedModel:
        assert self.shipped_dir is not None
        return load_artifact(self.shipped_dir / SIDECAR, self.shipped_dir, self.owners)


def _private(path: Path, flags: int = 0) -> int:
    """A descriptor of ``path`` for writing, created private to the service user like the models."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, MODEL_FILE_MODE)


def _rollback_target(current: str, history: list[Promotion], where: str) -> str:
    """The version that was live before ``current`` was promoted."""
    for entry in reversed(history):
        if entry.action == "promote" and entry.version == current:
            if not entry.previous:
                break
            return entry.previous
    raise RegistryError(f"{where}: nothing to roll back to from {current or 'no model'}")


# What `Registry.of` returns: the file registry or the database one, with the same methods.
AnyRegistry = Registry | DatabaseRegistry
