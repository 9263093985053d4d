"""Keep the live spam model current without a restart, and never lose the last good one.

Each worker process owns one loader. Asking it for the model costs a clock read;
at most every ``check_interval`` seconds it also checks its source for a new
live model, and only when that changed does it load and verify the new
artifact. A bad artifact (corrupt, of another format, or in files someone other
than root or the service user could have written) is logged and refused; the
model already in use stays live.

Two sources: the model directory (a stat of its sidecar; a promotion renames a
new one into place), or, with the PostgreSQL backend, the database registry
(:mod:`.database`; one small query for the latest promotion). A database check
runs in a thread of its own, so no message ever waits on the database: the
message that starts a check is scored with the model in memory, and a later one
finds the new model swapped in. The database is read once per promotion.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ArtifactError
from ..trust import TrustedOwners
from .artifact import SHIPPED_DIR, SIDECAR, load_artifact
from .classifier import SpamModel
from .database import Live, ModelDatabase, RegistryUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Seen:
    """A sidecar's identity: a rename, rewrite or touch changes it."""

    inode: int
    size: int
    mtime_ns: int


def _identity(path: Path) -> _Seen | None:
    """None when there is no sidecar; ArtifactError when there may be one we cannot see (permissions)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot check: {exc.strerror}") from None
    return _Seen(st.st_ino, st.st_size, st.st_mtime_ns)


class ModelSource(Protocol):
    """Where the live model comes from: ``identity`` is cheap and changes when the live model does."""

    where: str
    remote: bool  # checks may wait on the network: run them off the scanning thread

    def identity(self) -> Hashable | None:
        """None when the source has no live model; ArtifactError when it cannot tell."""

    def load(self, identity: Hashable) -> SpamModel: ...


class DirectorySource:
    """The model directory's ``spam.json`` (a file or the registry's link)."""

    remote = False

    def __init__(self, directory: Path, owners: TrustedOwners) -> None:
        self.directory = directory
        self.sidecar = directory / SIDECAR
        self.owners = owners
        self.where = str(directory)

    def identity(self) -> Hashable | None:
        return _identity(self.sidecar)

    def load(self, identity: Hashable) -> SpamModel:
        return load_artifact(self.sidecar, self.directory, self.owners).scorer()


class DatabaseSource:
    """The version of the registry's latest promotion in PostgreSQL (:mod:`.database`)."""

    remote = True

    def __init__(self, database: ModelDatabase) -> None:
        self.database = database
        self.where = database.where

    def identity(self) -> Hashable | None:
        return self.database.live()

    def load(self, identity: Hashable) -> SpamModel:
        if not isinstance(identity, Live):
            raise TypeError(f"not a promotion: {identity!r}")
        return self.database.load(identity.version).scorer()


class ModelLoader:
    """The live model: the source's if it has one, else the shipped default (if allowed).

    The source is the model directory unless ``source`` names another (the
    database registry). Raises :class:`ArtifactError` at construction only when
    no model at all can be loaded; later failures keep the current model.
    """

    def __init__(
        self,
        directory: str | Path,
        shipped: bool = True,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        shipped_dir: Path = SHIPPED_DIR,
        on_refusal: Callable[[str], None] | None = None,
        owners: TrustedOwners | None = None,
        source: ModelSource | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.sidecar = self.directory / SIDECAR
        self.shipped = shipped
        self.shipped_dir = shipped_dir
        self.check_interval = check_interval
        self.clock = clock
        self.owners = owners or TrustedOwners.of()
        self.source: ModelSource = source or DirectorySource(self.directory, self.owners)
        self._seen: Hashable | None = None
        self._checked = clock()
        self._checking: threading.Thread | None = None  # a remote source's check in progress
        self._on_refusal = on_refusal  # e.g. an alert: a model that cannot be read needs a human
        self._refusal = ""  # the last reason reported, so a lasting problem is reported once
        self._problem = ""  # the source's last failure to answer, logged once
        self._model: SpamModel = self._load_initial()

    def current(self) -> SpamModel:
        now = self.clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            if not self.source.remote:
                self._refresh()
            elif self._checking is None or not self._checking.is_alive():
                self._checking = threading.Thread(target=self._refresh, name="model-check", daemon=True)
                self._checking.start()
        return self._model

    def settle(self, timeout: float | None = None) -> None:
        """Wait for a check in progress to finish (tests, and a clean exit)."""
        if self._checking is not None:
            self._checking.join(timeout)

    def _load_initial(self) -> SpamModel:
        failure: ArtifactError | None = None
        try:
            self._seen = self.source.identity()
            if self._seen is not None:
                return self._load_configured(self._seen)
        except ArtifactError as exc:
            failure = exc
            if isinstance(exc, RegistryUnavailable):
                self._seen = None  # the database did not answer: load at the next check
            log.error("spam model refused: %s", exc)
            self._refused(str(exc))
        if not self.shipped:
            raise failure or ArtifactError(f"{self.source.where}: no spam model, and the shipped model is disabled")
        model = load_artifact(self.shipped_dir / SIDECAR, self.shipped_dir, self.owners).scorer()
        log.info("spam model %s (shipped default) in use, %s", model.version, model.regime.describe())
        return model

    def _refresh(self) -> None:
        """Load the source's live model if it changed; runs on a thread of its own for a remote source,
        where it is the only code touching ``_seen`` (``_model`` is swapped in one assignment)."""
        try:
            seen = self.source.identity()
        except ArtifactError as exc:  # e.g. a root-owned 0700 model directory: keep scanning with what we have
            if not self._problem:  # a lasting outage is logged once, not at every check
                log.error(
                    "spam model %s unreadable, keeping %s: %s",
                    "registry" if self.source.remote else "directory",
                    self._model.version,
                    exc,
                )
            self._problem = str(exc)
            self._refused(str(exc))
            return
        if seen == self._seen:
            if self._problem:
                log.info("spam model source %s answers again; model %s stays", self.source.where, self._model.version)
                self._problem = ""
            return
        self._seen = seen
        if seen is None:
            log.warning(
                "spam model source %s has no live model any more; keeping model %s",
                self.source.where,
                self._model.version,
            )
            return
        try:
            self._model = self._load_configured(seen)
            self._refusal = self._problem = ""
        except ArtifactError as exc:
            if not self._problem:
                log.error("new spam model refused, keeping %s: %s", self._model.version, exc)
            unreadable = isinstance(exc, RegistryUnavailable) or "cannot read" in str(exc)
            self._seen = None if unreadable else seen  # unreadable: retry at the next check
            self._problem = str(exc) if unreadable else ""
            self._refused(str(exc))

    def _refused(self, reason: str) -> None:
        if self._on_refusal is None or reason == self._refusal:
            return
        self._refusal = reason
        try:
            self._on_refusal(reason)
        except Exception:  # reporting never costs the model in use
            log.exception("could not report the refused spam model")

    def _load_configured(self, seen: Hashable) -> SpamModel:
        """The source's model; any failure to load it is a refusal, so the model in use stays."""
        try:
            model = self.source.load(seen)
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that breaks the loader is refused, never raised
            raise ArtifactError(f"{self.source.where}: cannot load the model ({type(exc).__name__}: {exc})") from None
        log.info("spam model %s loaded from %s, %s", model.version, self.source.where, model.regime.describe())
        return model
