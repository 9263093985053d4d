"""Keep the live spam model current without a restart, and never lose the last good one.

Each worker process owns one loader. Asking it for the model costs a clock read;
at most every ``check_interval`` seconds it also stats the model directory's
sidecar, and only when that changed (a promotion renames a new sidecar into
place) does it load and verify the new artifact. A bad artifact (corrupt, of
another format, or in files someone other than root or the service user could
have written) is logged and refused; the model already in use stays live.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from ..trust import TrustedOwners
from .artifact import SHIPPED_DIR, SIDECAR, load_artifact
from .classifier import SpamModel

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


class ModelLoader:
    """The live model: the model directory's if it has one, else the shipped default (if allowed).

    Raises :class:`ArtifactError` at construction only when no model at all can be
    loaded; later failures keep the current model.
    """

    def __init__(self, directory: str | Path, shipped: bool = True, check_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, shipped_dir: Path = SHIPPED_DIR,
                 on_refusal: Callable[[str], None] | None = None, owners: TrustedOwners | None = None):
        self.directory = Path(directory)
        self.sidecar = self.directory / SIDECAR
        self.shipped = shipped
        self.shipped_dir = shipped_dir
        self.check_interval = check_interval
        self.clock = clock
        self.owners = owners or TrustedOwners.of()
        self._seen: _Seen | None = None
        self._checked = clock()
        self._on_refusal = on_refusal     # e.g. an alert: a model that cannot be read needs a human
        self._refusal = ""                # the last reason reported, so a lasting problem is reported once
        self._model: SpamModel = self._load_initial()

    def current(self) -> SpamModel:
        now = self.clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._refresh()
        return self._model

    def _load_initial(self) -> SpamModel:
        failure: ArtifactError | None = None
        try:
            self._seen = _identity(self.sidecar)
            if self._seen is not None:
                return self._load_configured()
        except ArtifactError as exc:
            failure = exc
            log.error("spam model refused: %s", exc)
            self._refused(str(exc))
        if not self.shipped:
            raise failure or ArtifactError(f"{self.sidecar}: no spam model, and the shipped model is disabled")
        model = load_artifact(self.shipped_dir / SIDECAR, self.shipped_dir, self.owners).scorer()
        log.info("spam model %s (shipped default) in use, %s", model.version, model.regime.describe())
        return model

    def _refresh(self) -> None:
        try:
            seen = _identity(self.sidecar)
        except ArtifactError as exc:   # e.g. a root-owned 0700 model directory: keep scanning with what we have
            log.error("spam model directory unreadable, keeping %s: %s", self._model.version, exc)
            self._refused(str(exc))
            return
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            log.warning("spam model sidecar %s disappeared; keeping model %s", self.sidecar, self._model.version)
            return
        try:
            self._model = self._load_configured()
            self._refusal = ""
        except ArtifactError as exc:
            log.error("new spam model refused, keeping %s: %s", self._model.version, exc)
            self._seen = None if "cannot read" in str(exc) else seen   # unreadable: retry at the next check
            self._refused(str(exc))

    def _refused(self, reason: str) -> None:
        if self._on_refusal is None or reason == self._refusal:
            return
        self._refusal = reason
        try:
            self._on_refusal(reason)
        except Exception:      # reporting never costs the model in use
            log.exception("could not report the refused spam model")

    def _load_configured(self) -> SpamModel:
        model = load_artifact(self.sidecar, self.directory, self.owners).scorer()
        log.info("spam model %s loaded from %s, %s", model.version, self.directory, model.regime.describe())
        return model
