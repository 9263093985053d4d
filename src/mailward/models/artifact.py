"""Model artifacts on disk: a joblib payload plus a JSON sidecar that vouches for it.

The payload holds only the model's sufficient statistics as numpy/scipy arrays
(class and feature counts), never a pickled estimator, so it stays readable
across scikit-learn releases and training can resume from it with
``partial_fit``. The sidecar names the payload file, its sha256, and every
setting needed to rebuild the classifier exactly.

Loading refuses, with an :class:`ArtifactError` that names the file, anything
whose checksum, format, tokenizer or feature hashing does not match this
Mailward, and anything outside the directory it was asked to load from. Writes
go to a temporary file, are fsynced and renamed into place: the payload first
(under a content-derived name), the sidecar last, so a reader sees either the
old model or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import sklearn
from scipy import sparse
from sklearn.naive_bayes import MultinomialNB

from ..errors import ArtifactError
from .classifier import CLASSES, Combiner, SpamModel, naive_bayes_from_counts
from .features import FeatureSettings, check_columns, hash_probe
from .tokens import TOKENIZER_VERSION, TokenizerSettings

FORMAT_VERSION = 1
KIND = "mailward-spam-model"
SIDECAR = "spam.json"          # the live model of a model directory
SHIPPED_DIR = Path(__file__).resolve().parent / "default"


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """What training produces and continues from: the fitted counts and how to use them."""

    nb: MultinomialNB
    features: FeatureSettings = field(default_factory=FeatureSettings)
    combiner: Combiner = field(default_factory=Combiner)
    training_data: dict = field(default_factory=dict)    # summary of what it learned from (JSON)
    version: str = ""                                    # set from the payload checksum when saved

    @property
    def class_counts(self) -> dict[str, int]:
        return {str(c): int(n) for c, n in zip(self.nb.classes_, self.nb.class_count_)}

    def scorer(self) -> SpamModel:
        return SpamModel.build(self.version, self.features, self.combiner, self.nb)


def save_artifact(model: TrainedModel, directory: str | Path, sidecar_name: str = SIDECAR) -> TrainedModel:
    """Write ``model`` into ``directory`` atomically; returns it with its version set."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if list(model.nb.classes_) != list(CLASSES) or min(model.nb.class_count_) < 1:
        raise ArtifactError(f"{directory}: a spam model needs at least one ham and one spam message")
    payload = io.BytesIO()
    joblib.dump({"classes": list(CLASSES), "class_count": np.asarray(model.nb.class_count_, dtype=np.float64),
                 "feature_count": sparse.csr_matrix(model.nb.feature_count_)}, payload, compress=("xz", 3))
    data = payload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    version = f"nb-{digest[:12]}"
    artifact = f"{Path(sidecar_name).stem}-{digest[:16]}.joblib"
    sidecar = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "artifact": artifact,
        "sha256": digest,
        "size": len(data),
        "sklearn_version": sklearn.__version__,
        "features": model.features.as_dict(),
        "naive_bayes": {"variant": "MultinomialNB", "alpha": float(model.nb.alpha)},
        "combiner": model.combiner.as_dict(),
        "class_counts": model.class_counts,
        "training_data": model.training_data,
    }
    write_atomic(directory / artifact, data)
    write_atomic(directory / sidecar_name, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return TrainedModel(model.nb, model.features, model.combiner, model.training_data, version)


def load_artifact(sidecar_path: str | Path, root: str | Path) -> TrainedModel:
    """Load the model a sidecar describes; both files must lie inside ``root``."""
    sidecar_path = _inside(Path(sidecar_path), Path(root))
    meta = read_sidecar(sidecar_path)
    payload_path = _payload_path(sidecar_path, meta["artifact"], Path(root))
    try:
        data = payload_path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{payload_path}: cannot read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ArtifactError(f"{payload_path}: sha256 does not match {sidecar_path.name}; refusing a corrupt model")
    try:
        payload = joblib.load(io.BytesIO(data))
        class_count = np.asarray(payload["class_count"], dtype=np.float64)
        feature_count = sparse.csr_matrix(payload["feature_count"])
        classes = list(payload["classes"])
    except Exception as exc:  # a checksummed file that still fails to unpickle was written wrongly
        raise ArtifactError(f"{payload_path}: unreadable payload ({type(exc).__name__})") from None
    features = _features(meta, sidecar_path)
    if classes != list(CLASSES) or feature_count.shape != (len(CLASSES), features.n_features) \
            or class_count.shape != (len(CLASSES),):
        raise ArtifactError(f"{payload_path}: payload shape does not match {sidecar_path.name}")
    try:
        alpha = float(meta["naive_bayes"]["alpha"])
        combiner = Combiner(**meta["combiner"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{sidecar_path}: bad model settings ({exc})") from None
    nb = naive_bayes_from_counts(class_count, feature_count, alpha)
    return TrainedModel(nb, features, combiner, dict(meta.get("training_data", {})), str(meta["model_version"]))


def read_sidecar(path: Path) -> dict:
    """Parse and check a sidecar: kind, format and library versions."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a JSON sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ArtifactError(f"{path}: not a Mailward spam model sidecar")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {meta.get('format_version')!r}, "
                            f"this Mailward reads {FORMAT_VERSION}")
    built_with = str(meta.get("sklearn_version", ""))
    if built_with.split(".")[0] != sklearn.__version__.split(".")[0]:
        raise ArtifactError(f"{path}: built with scikit-learn {built_with or '?'}, "
                            f"installed is {sklearn.__version__}")
    for key in ("artifact", "sha256", "model_version", "features", "naive_bayes", "combiner"):
        if key not in meta:
            raise ArtifactError(f"{path}: sidecar lacks {key!r}")
    return meta


def _features(meta: dict, path: Path) -> FeatureSettings:
    spec = meta["features"]
    try:
        tokenizer = TokenizerSettings(**spec["tokenizer"])
        features = FeatureSettings(n_features=int(spec["n_features"]), tokenizer=tokenizer)
        recorded_probe = list(spec["hash_probe"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: bad feature settings ({exc})") from None
    if tokenizer.version != TOKENIZER_VERSION:
        raise ArtifactError(f"{path}: tokenizer version {tokenizer.version}, this Mailward tokenizes "
                            f"as version {TOKENIZER_VERSION}; retrain the model")
    vectorizer = features.vectorizer()
    if hash_probe(vectorizer) != recorded_probe or not check_columns(vectorizer):
        raise ArtifactError(f"{path}: feature hashing of the installed scikit-learn {sklearn.__version__} "
                            f"differs from the one that built the model")
    return features


def _inside(path: Path, root: Path) -> Path:
    real_root = root.resolve()
    real = path.resolve()
    if real.parent != real_root and real_root not in real.parents:
        raise ArtifactError(f"{path}: outside the model directory {root}; refusing to load")
    return real


def _payload_path(sidecar: Path, name: object, root: Path) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ArtifactError(f"{sidecar}: artifact must be a plain file name next to the sidecar, got {name!r}")
    return _inside(sidecar.parent / name, root)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
