"""Model artifacts on disk: a payload of plain arrays plus a JSON sidecar that vouches for it.

The payload is an ``.npz`` archive of numeric arrays (documents per class, the
columns some message had and their per-class counts), read with
``allow_pickle=False``: nothing in it can execute, so a hostile file is at
worst refused. Format 1 payloads were joblib pickles, which run code when
loaded; they are refused with the command that converts or rebuilds them. The
arrays are the model's sufficient statistics, so they stay readable across
scikit-learn releases, scoring derives its weights from them with numpy alone
(no scikit-learn is imported to load or score a model), and training can resume
from them. The sidecar names the payload file, its sha256, and every setting
needed to rebuild the classifier exactly.

Loading refuses, with an :class:`ArtifactError` that names the file, anything
whose checksum, format, tokenizer or feature hashing does not match this
Mailward, anything outside the directory it was asked to load from, and
anything not owned by root or the service user or writable by others (a
checksum proves integrity, not origin). Writes go to a temporary file, are
fsynced and renamed into place: the payload first (under a content-derived
name), the sidecar last, so a reader sees either the old model or the new one,
never half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..trust import TrustedOwners
from .classifier import CLASSES, Combiner, NaiveBayesCounts, Regime, SpamModel
from .features import FeatureSettings, hash_probe
from .tokens import TOKENIZER_VERSION, TokenizerSettings

FORMAT_VERSION = 2
PICKLE_FORMAT = 1  # joblib payloads: never loaded, only converted on request
KIND = "mailward-spam-model"
SIDECAR = "spam.json"  # the live model of a model directory
PAYLOAD_SUFFIX = ".npz"
SHIPPED_DIR = Path(__file__).resolve().parent / "default"
# Private to the service user, as all state is (README), whatever the umask: the milter and the CLI
# both run as that user, and the loader refuses anything group- or other-writable.
MODEL_FILE_MODE = 0o600
MODEL_DIR_MODE = 0o700
PACKAGE_FILE_MODE = 0o644  # the shipped model, in the package: read by every user, like the code
MAX_FEATURES = 2**26  # bounds the weights a sidecar can make a worker allocate (256 MiB)
MAX_SIDECAR = 16 << 20  # a sidecar is settings and a training summary: kilobytes
# Documents a class can have learned (a trillion): larger counts are no mail count, and their sums
# would overflow the weights to inf, scoring every message 1.0.
MAX_DOCUMENTS = 2.0**40
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same model gives the same bytes
CONVERT_HINT = (
    "retrain it (`mailward train`), rebuild the shipped one (see mailward/models/README.md), "
    "or, only if you trust the file, convert it: `python -m mailward.models.convert --trust-pickle DIR`"
)


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """What training produces and continues from: the fitted counts and how to use them."""

    counts: NaiveBayesCounts
    features: FeatureSettings = field(default_factory=FeatureSettings)
    combiner: Combiner = field(default_factory=Combiner)
    training_data: dict[str, Any] = field(default_factory=dict)  # summary of what it learned from (JSON)
    version: str = ""  # set from the payload checksum when saved

    @property
    def class_counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(CLASSES, self.counts.class_count)}

    def scorer(self) -> SpamModel:
        return SpamModel.build(
            self.version, self.features, self.combiner, self.counts, Regime.of_training(self.training_data)
        )


def save_artifact(
    model: TrainedModel,
    directory: str | Path,
    sidecar_name: str = SIDECAR,
    version: str = "",
    mode: int = MODEL_FILE_MODE,
) -> TrainedModel:
    """Write ``model`` into ``directory`` atomically, its files with ``mode``; returns it with its version set.

    The version is derived from the payload unless given (a converted model keeps its own).
    """
    directory = Path(directory)
    directory.mkdir(mode=mode | (mode & 0o444) >> 2, parents=True, exist_ok=True)  # searchable where readable
    if min(model.counts.class_count) < 1:
        raise ArtifactError(f"{directory}: a spam model needs at least one ham and one spam message")
    sidecar, data = encode_artifact(model, Path(sidecar_name).stem, version)
    write_atomic(directory / sidecar["artifact"], data, mode)
    write_atomic(directory / sidecar_name, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode(), mode)
    return TrainedModel(
        model.counts, model.features, model.combiner, model.training_data, str(sidecar["model_version"])
    )


def encode_artifact(
    model: TrainedModel, stem: str = Path(SIDECAR).stem, version: str = ""
) -> tuple[dict[str, Any], bytes]:
    """The sidecar and payload bytes of ``model``, wherever they are kept (files here, or the
    database registry of :mod:`.database`). The version is derived from the payload unless given."""
    counts = model.counts
    if min(counts.class_count) < 1:
        raise ArtifactError(f"model {version or '(new)'}: a spam model needs at least one ham and one spam message")
    data = _npz(
        {
            "class_count": counts.class_count,
            "column_steps": np.diff(counts.columns.astype(np.int64), prepend=0),
            "counts": counts.counts,
        }
    )
    digest = hashlib.sha256(data).hexdigest()
    version = version or f"nb-{digest[:12]}"
    sidecar = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "artifact": f"{stem}-{digest[:16]}{PAYLOAD_SUFFIX}",
        "sha256": digest,
        "size": len(data),
        "sklearn_version": sklearn_version(),
        "features": model.features.as_dict(),
        "naive_bayes": {"variant": "MultinomialNB", "alpha": float(counts.alpha)},
        "combiner": model.combiner.as_dict(),
        "class_counts": model.class_counts,
        "training_data": model.training_data,
    }
    return sidecar, data


def load_artifact(sidecar_path: str | Path, root: str | Path, owners: TrustedOwners | None = None) -> TrainedModel:
    """Load the model a sidecar describes; both files must lie inside ``root`` and belong to
    ``owners`` (default: root and this process's user). The package's own model is trusted as
    its code is."""
    sidecar_path = _inside(Path(sidecar_path), Path(root))
    checked = Path(root).resolve() != SHIPPED_DIR
    owners = owners or TrustedOwners.of()
    meta = read_sidecar(sidecar_path)
    payload_path = _payload_path(sidecar_path, meta["artifact"], Path(root))
    if checked:
        owners.require(sidecar_path, Path(root))
        owners.require(payload_path, Path(root))
    data = _read_regular(payload_path, _declared_payload_size(meta, sidecar_path), exact=True)
    return decode_artifact(meta, data, sidecar_path, payload_path)


def decode_artifact(
    meta: dict[str, Any], data: bytes, where: str | Path, payload_where: str | Path = ""
) -> TrainedModel:
    """The model a checked sidecar (:func:`parse_sidecar`) and its payload bytes describe.

    Refuses payload bytes whose sha256 is not the sidecar's and payloads that are
    not a spam model's arrays; ``where`` names the sidecar in errors.
    """
    payload_where = payload_where or where
    if len(data) != _declared_payload_size(meta, where):
        raise ArtifactError(f"{payload_where}: {len(data)} bytes, {Path(str(where)).name} says {meta['size']}")
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ArtifactError(f"{payload_where}: sha256 does not match {Path(str(where)).name}; refusing a corrupt model")
    features = _features(meta, where)
    alpha, combiner = model_settings(meta, where)
    training_data = meta.get("training_data", {})
    if not isinstance(training_data, dict):
        raise ArtifactError(f"{where}: training_data is {type(training_data).__name__}, not a summary")
    arrays = _read_npz(data, payload_where, features.n_features)
    counts = NaiveBayesCounts(arrays["class_count"], arrays["columns"], arrays["counts"], features.n_features, alpha)
    return TrainedModel(counts, features, combiner, dict(training_data), str(meta["model_version"]))


def model_settings(meta: dict[str, Any], where: str | Path) -> tuple[float, Combiner]:
    """The smoothing ``alpha`` and the combiner a sidecar records, type-checked as JSON: a string
    or a bool where a number belongs would load, then fail every scan."""
    try:
        alpha = _number(meta["naive_bayes"]["alpha"], "alpha")
        spec = meta["combiner"]
        if not isinstance(spec, dict):
            raise TypeError("combiner is not an object")
        combiner = Combiner(**spec)
        combiner = Combiner(
            _count(combiner.evidence_per_side, "evidence_per_side", 1),
            _number(combiner.slope, "slope"),
            _number(combiner.intercept, "intercept"),
        )
        if alpha <= 0:
            raise ValueError("alpha must be positive")
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: bad model settings ({exc})") from None
    return alpha, combiner


def _number(value: object, name: str) -> float:
    """A finite JSON number (not a bool, not a string)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if math.isfinite(number):
            return number
    raise ValueError(f"{name} must be a finite number, not {value!r}")


def _count(value: object, name: str, least: int = 0) -> int:
    """A JSON integer of at least ``least`` (not a bool, not a float)."""
    if type(value) is not int or value < least:
        raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")
    return value


def _declared_payload_size(meta: dict[str, Any], where: str | Path) -> int:
    try:
        return _count(meta["size"], "size")
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{where}: bad payload size ({exc})") from None


def _read_regular(path: Path, limit: int, exact: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes (exactly ``limit``
    if ``exact``), checked before reading: a FIFO would block the loader forever, and an oversized
    file would be read whole before its checksum refused it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path}: not a regular file; refusing to load it")
        if st.st_size > limit or (exact and st.st_size != limit):
            raise ArtifactError(f"{path}: {st.st_size} bytes, {'expected' if exact else 'at most'} {limit}")
        try:
            return fh.read(st.st_size + 1)  # one more: a file that grew meanwhile is seen to differ
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from None


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (a zip of ``.npy`` arrays) that numpy reads, written reproducibly."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED  # LZMA: 30 % smaller, 40x slower to save
            archive.writestr(info, member.getvalue())
    return out.getvalue()


def _declared_size(archive: zipfile.ZipFile, member: str) -> int:
    """Bytes the ``.npy`` member's header says its array has: numpy allocates that before reading."""
    with archive.open(member) as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
    return math.prod(shape) * dtype.itemsize


def _read_npz(data: bytes, path: str | Path, n_features: int) -> dict[str, np.ndarray]:
    """The payload's arrays, checked for name, type, shape and consistency before anything uses them.

    Columns are stored as steps from the previous one (sorted columns: small
    numbers that compress to a third).

    Declared sizes are bounded before decompressing, so a crafted archive cannot
    make the loader allocate more than a model of ``n_features`` columns needs.
    """
    budget = {"class_count": 1024, "column_steps": 8 * n_features + 1024, "counts": 16 * n_features + 1024}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {info.filename: info.file_size for info in archive.infolist()}
            if sorted(members) != sorted(f"{name}.npy" for name in budget):
                raise ArtifactError(f"{path}: payload holds {sorted(members)}, not a spam model's arrays")
            if any(
                members[f"{name}.npy"] > limit or _declared_size(archive, f"{name}.npy") > limit
                for name, limit in budget.items()
            ):
                raise ArtifactError(f"{path}: payload arrays larger than {n_features} columns need")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in budget}
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever numpy or zipfile says, the file is not a payload
        raise ArtifactError(
            f"{path}: unreadable payload ({type(exc).__name__}: {exc}); "
            f"payloads are .npz arrays since format {FORMAT_VERSION}"
        ) from None
    class_count, steps, counts = arrays["class_count"], arrays["column_steps"], arrays["counts"]
    if not (
        class_count.dtype == counts.dtype == np.float64
        and steps.dtype == np.int64
        and class_count.shape == (len(CLASSES),)
        and steps.ndim == 1
        and counts.shape == (len(CLASSES), len(steps))
    ):
        raise ArtifactError(f"{path}: payload arrays do not have a spam model's types and shapes")
    if len(steps) and (steps[0] < 0 or np.any(steps[1:] < 1) or np.any(steps >= n_features)):
        raise ArtifactError(f"{path}: payload columns are not distinct, sorted and below {n_features}")
    columns = np.cumsum(steps, out=steps)  # in place: no second column-sized array; each step < n_features
    if len(columns) and columns[-1] >= n_features:
        raise ArtifactError(f"{path}: payload columns are not distinct, sorted and below {n_features}")
    if not (
        np.all(np.isfinite(counts))
        and np.all(counts >= 0)
        and np.all(np.isfinite(class_count))
        and np.all(class_count >= 1)
    ):
        raise ArtifactError(f"{path}: payload counts are not non-negative numbers with both classes present")
    if np.any(counts > MAX_DOCUMENTS) or np.any(class_count > MAX_DOCUMENTS):
        raise ArtifactError(f"{path}: payload counts above {MAX_DOCUMENTS:.0f} documents; no mail count is that large")
    return {"class_count": class_count, "columns": columns, "counts": counts}


def read_sidecar(path: Path) -> dict[str, Any]:
    """Parse and check a sidecar file: kind, format and library versions."""
    try:
        text = _read_regular(path, MAX_SIDECAR).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: not a JSON sidecar ({exc})") from None
    return parse_sidecar(text, path)


def parse_sidecar(text: str, path: str | Path) -> dict[str, Any]:
    """Parse and check a sidecar's JSON text, from a file or the database: kind, format and library versions."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ArtifactError(f"{path}: not a JSON sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ArtifactError(f"{path}: not a Mailward spam model sidecar")
    if meta.get("format_version") == PICKLE_FORMAT:
        raise ArtifactError(
            f"{path}: format version {PICKLE_FORMAT} keeps the model in a joblib pickle, which "
            f"Mailward no longer loads (unpickling runs code from the file); {CONVERT_HINT}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {meta.get('format_version')!r}, this Mailward reads {FORMAT_VERSION}"
        )
    built_with, installed = str(meta.get("sklearn_version", "")), sklearn_version()
    if built_with.split(".")[0] != installed.split(".")[0]:
        raise ArtifactError(f"{path}: built with scikit-learn {built_with or '?'}, installed is {installed or '?'}")
    for key in ("artifact", "sha256", "size", "model_version", "features", "naive_bayes", "combiner"):
        if key not in meta:
            raise ArtifactError(f"{path}: sidecar lacks {key!r}")
    return meta


def sklearn_version() -> str:
    """The installed scikit-learn's version ("" if none), read from its metadata: training resumes a
    model's counts with it, and importing it only to ask would cost a scanning worker seconds."""
    try:
        return installed_version("scikit-learn")
    except PackageNotFoundError:
        return ""


def _features(meta: dict[str, Any], path: str | Path) -> FeatureSettings:
    """The feature settings a sidecar records, each of its JSON type: ``max_words: "1000"`` or
    ``max_hosts: null`` would load, then fail every scan."""
    spec = meta["features"]
    try:
        tokenizer = _tokenizer(spec["tokenizer"])
        n_features = _count(spec["n_features"], "n_features", 2)
        if n_features > MAX_FEATURES:
            raise ArtifactError(f"{path}: {n_features} feature columns, at most {MAX_FEATURES} are loaded")
        features = FeatureSettings(n_features=n_features, tokenizer=tokenizer)
        recorded_probe = list(spec["hash_probe"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: bad feature settings ({exc})") from None
    if tokenizer.version != TOKENIZER_VERSION:
        raise ArtifactError(
            f"{path}: tokenizer version {tokenizer.version}, this Mailward tokenizes "
            f"as version {TOKENIZER_VERSION}; retrain the model"
        )
    if hash_probe(features.n_features) != recorded_probe:
        raise ArtifactError(f"{path}: feature hashing (MurmurHash3 of mmh3) differs from the one that built the model")
    return features


def _tokenizer(spec: object) -> TokenizerSettings:
    """Tokenizer settings of the types their defaults have (a bool is not an int); counts non-negative."""
    if not isinstance(spec, dict):
        raise TypeError("tokenizer is not an object")
    settings = TokenizerSettings(**spec)
    for name, default in TokenizerSettings().as_dict().items():
        value = getattr(settings, name)
        if type(value) is not type(default):
            raise TypeError(f"tokenizer {name} must be {type(default).__name__}, not {value!r}")
        if type(value) is int and value < 0:
            raise ValueError(f"tokenizer {name} must not be negative, not {value}")
    return settings


def _inside(path: Path, root: Path) -> Path:
    try:
        real_root = root.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ArtifactError(f"{path}: cannot resolve ({exc})") from None
    if real.parent != real_root and real_root not in real.parents:
        raise ArtifactError(f"{path}: outside the model directory {root}; refusing to load")
    return real


def _payload_path(sidecar: Path, name: object, root: Path) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ArtifactError(f"{sidecar}: artifact must be a plain file name next to the sidecar, got {name!r}")
    return _inside(sidecar.parent / name, root)


def write_atomic(path: Path, data: bytes, mode: int = MODEL_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
