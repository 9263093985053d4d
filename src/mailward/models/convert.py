"""Convert format-1 spam models (joblib pickles) to plain arrays, trusting the files named.

    python -m mailward.models.convert --trust-pickle DIR [DIR ...]

Unpickling runs whatever code the file names, so Mailward never does it on its
own: a format-1 model is refused everywhere else. This command unpickles, once,
the models in the directories an admin names and vouches for (site models
trained before the upgrade); run it only on files you know Mailward wrote. Each
``DIR`` is a model directory (its ``spam.json``) or a registry (also every
``versions/*/spam.json``). A converted model keeps its version, so promotions
and rollbacks still refer to it; the old payload is removed. When the training
ledger still holds the mail, retraining (``mailward train``) needs no trust.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import stat
import sys
from pathlib import Path

import numpy as np
from scipy import sparse

from ..errors import ArtifactError, MailwardError
from ..trust import TrustedOwners
from .artifact import (
    PACKAGE_FILE_MODE,
    PICKLE_FORMAT,
    SIDECAR,
    TrainedModel,
    _features,
    model_settings,
    save_artifact,
)
from .classifier import CLASSES, NaiveBayesCounts


def convert(sidecar: Path, owners: TrustedOwners, root: Path) -> str | None:
    """Rewrite one format-1 model under ``root`` in place; its version, or None if it is not format 1."""
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if meta.get("format_version") != PICKLE_FORMAT:
        return None
    payload = sidecar.parent / Path(str(meta["artifact"])).name
    owners.require(sidecar, root)
    owners.require(payload, root)
    data = payload.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise ArtifactError(f"{payload}: sha256 does not match {sidecar.name}; not converting a corrupt model")
    import joblib  # only here: nothing else in Mailward unpickles

    arrays = joblib.load(io.BytesIO(data))  # the trusted step: this runs the pickle
    if list(arrays["classes"]) != list(CLASSES):
        raise ArtifactError(f"{payload}: classes {arrays['classes']}, not {list(CLASSES)}")
    feature_count = sparse.csr_matrix(arrays["feature_count"])
    columns = np.unique(feature_count.indices)
    counts = np.ascontiguousarray(feature_count[:, columns].toarray(), dtype=np.float64)
    features = _features(meta, sidecar)
    alpha, combiner = model_settings(meta, sidecar)
    model = TrainedModel(
        NaiveBayesCounts(
            np.asarray(arrays["class_count"], dtype=np.float64),
            columns.astype(np.int64),
            counts,
            features.n_features,
            alpha,
        ),
        features,
        combiner,
        dict(meta.get("training_data", {})),
    )
    # In place, as readable as before (a conversion run as root must not hide the model from the milter).
    mode = stat.S_IMODE(sidecar.stat().st_mode) & PACKAGE_FILE_MODE
    save_artifact(model, sidecar.parent, sidecar.name, version=str(meta["model_version"]), mode=mode)
    payload.unlink()
    return str(meta["model_version"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailward.models.convert", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        required=True,
        help="required: you vouch that these files were written by Mailward, not by an attacker",
    )
    parser.add_argument("--service-user", default="", help="milter.user, whose files are also trusted")
    parser.add_argument("directories", nargs="+", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    owners = TrustedOwners.of(args.service_user)
    failed = 0
    for directory in args.directories:
        sidecars = [
            p
            for p in [directory / SIDECAR, *sorted(directory.glob(f"versions/*/{SIDECAR}"))]
            if p.is_file() and not p.is_symlink()
        ]
        if not sidecars:
            print(f"{directory}: no {SIDECAR} here or under versions/", file=sys.stderr)
            failed += 1
        for sidecar in sidecars:
            try:
                version = convert(sidecar, owners, directory)
            except (MailwardError, OSError, ValueError, KeyError, TypeError) as exc:
                print(f"{sidecar}: not converted: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{sidecar}: " + (f"model {version} converted" if version else "already in the current format"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
