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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Seen(st.st_ino, st.st_size, st.st_mtime_ns)


class ModelLoader:
    """The live model: the model directory's if it has one, else the shipped default (if allowed).

    Raises :class:`ArtifactError` at construction only when no model at all can be
    loaded; later failures keep the current model.
    """

    def __init__(self, directory: str | Path, shipped: bool = True, check_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, shipped_dir: Path = SHIPPED_DIR,
                 owners: TrustedOwners | None = None):
        self.directory = Path(directory)
        self.sidecar = self.directory / SIDECAR
        self.shipped = shipped
        self.shipped_dir = shipped_dir
        self.check_interval = check_interval
        self.clock = clock
        self.owners = owners or TrustedOwners.of()
        self._seen: _Seen | None = None
        self._checked = clock()
        self._model: SpamModel = self._load_initial()

    def current(self) -> SpamModel:
        now = self.clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._refresh()
        return self._model

    def _load_initial(self) -> SpamModel:
        self._seen = _identity(self.sidecar)
        failure: ArtifactError | None = None
        if self._seen is not None:
            try:
                return self._load_configured()
            except ArtifactError as exc:
                failure = exc
                log.error("spam model refused: %s", exc)
        if not self.shipped:
            raise failure or ArtifactError(f"{self.sidecar}: no spam model, and the shipped model is disabled")
        model = load_artifact(self.shipped_dir / SIDECAR, self.shipped_dir, self.owners).scorer()
        log.info("spam model %s (shipped default) in use", model.version)
        return model

    def _refresh(self) -> None:
        seen = _identity(self.sidecar)
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            log.warning("spam model sidecar %s disappeared; keeping model %s", self.sidecar, self._model.version)
            return
        try:
            self._model = self._load_configured()
        except ArtifactError as exc:
            log.error("new spam model refused, keeping %s: %s", self._model.version, exc)

    def _load_configured(self) -> SpamModel:
        model = load_artifact(self.sidecar, self.directory, self.owners).scorer()
        log.info("spam model %s loaded from %s", model.version, self.directory)
        return model
