"""Continuous learning: models that always equal a base model plus the ledger's current labels.

Every model trained here records its *lineage* in its sidecar: the ``base``
version whose counts it started from ("" for none) and the last ledger entry
``seq`` it reflects. Its counts are then exactly base + every message's current
label as of ``seq``. ``update`` keeps that true for the entries after ``seq``:

* a message never seen is learned (``partial_fit``);
* a repeated label is not even in the ledger;
* a changed label is unlearned from the old class and learned in the new one.
  Multinomial Naive Bayes keeps nothing but sums of the messages' feature rows
  per class (``feature_count_``, ``class_count_``). The rows are those of the
  same deterministic tokenizer and hashing (the artifact refuses a different
  one), the sums are of small integers held exactly in float64, so
  ``partial_fit`` of the same row with weight -1 restores the sums exactly as if
  the message had never been learned. ``tests/test_training_ledger.py`` checks
  the counts against a rebuild. ``rebuild`` recomputes from scratch anyway.

A model without lineage (the shipped default, a hand-placed artifact) is its
own base at ``seq`` 0. Incremental updates keep the model's score calibration;
a rebuild from no base calibrates anew.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError
from ..models.artifact import TrainedModel
from ..models.classifier import CLASSES, SpamModel
from ..models.tokens import SITE
from .calibration import SITE_CALIBRATION, OnlineCalibration
from .ledger import Ledger
from .registry import AnyRegistry
from .sources import LabelledMail
from .streams import progress, with_tokens
from .trainer import BATCH, Trainer, TrainingSettings, train

if TYPE_CHECKING:
    from scipy import sparse

    from ..quarantine.store import QuarantineStore

log = logging.getLogger(__name__)

QUARANTINE_MARK = "quarantine"  # the ledger's high-water mark in the quarantine's label table


@dataclass(frozen=True)
class Lineage:
    base: str  # version a rebuild starts from; "" = empty counts
    seq: int  # last ledger entry the model reflects

    @classmethod
    def of(cls, model: TrainedModel) -> Lineage:
        data = model.training_data.get("lineage")
        if isinstance(data, dict) and "base" in data and "seq" in data:
            return cls(str(data["base"]), int(data["seq"]))
        return cls(model.version, 0)

    def as_dict(self) -> dict[str, object]:
        return {"base": self.base, "seq": self.seq}


@dataclass(frozen=True)
class UpdateResult:
    model: TrainedModel | None  # None: nothing new in the ledger
    learned: int = 0  # messages learned for the first time
    relabelled: int = 0  # messages moved from one class to the other
    rebuilt: bool = False


def record(ledger: Ledger, mails: Iterable[LabelledMail], analyst: str, source: str = "") -> Counter[str]:
    """Append each message's label to the ledger; counts per :class:`LabelOutcome`."""
    outcomes: Counter[str] = Counter()
    mails = iter(mails)
    while chunk := list(islice(mails, 500)):
        with ledger.batch():
            for mail in chunk:
                _, outcome = ledger.record(mail.data, mail.spam_label, source or mail.origin, analyst)
                outcomes[outcome] += 1
    return outcomes


def import_quarantine(ledger: Ledger, store: QuarantineStore) -> Counter[str]:
    """Copy analysts' quarantine labels (and the bytes) into the ledger, from where it left off.

    A message whose bytes the quarantine no longer has cannot be learned: it is
    counted as ``missing`` and passed over.
    """
    outcomes: Counter[str] = Counter()
    mark = ledger.mark(QUARANTINE_MARK)
    while records := store.labels_since(mark, 1000):
        with ledger.batch():
            for rec in records:
                try:
                    data = store.read(rec.quarantine_id)
                except StoreError as exc:
                    log.warning("quarantine label %d for %s not learnable: %s", rec.seq, rec.quarantine_id, exc)
                    outcomes["missing"] += 1
                else:
                    _, outcome = ledger.record(
                        data, rec.label.training_class, f"quarantine:{rec.quarantine_id}", rec.actor
                    )
                    outcomes[outcome] += 1
                mark = rec.seq
            ledger.set_mark(QUARANTINE_MARK, mark)
    return outcomes


def rebuild(
    ledger: Ledger,
    registry: AnyRegistry,
    base: str = "",
    jobs: int = 1,
    settings: TrainingSettings = TrainingSettings(),
) -> TrainedModel:
    """Base counts plus every message's current label, as of the ledger's last entry."""
    upto = ledger.last_seq()
    labelled = ledger.current_labels(upto)
    lineage = Lineage(base, upto)
    if not base:
        examples = (
            (digest, tokens, label)
            for (digest, label), tokens in progress(
                with_tokens(labelled, settings.features, _data(ledger), jobs), "training"
            )
        )
        model = train(examples, settings)
        return _with_summary(model, ledger, lineage, parent="", learned=sum(model.class_counts.values()), relabelled=0)
    start = registry.load(base)
    trainer = Trainer.resume(start)
    learned = _learn(trainer, ledger, ((d, None, label) for d, label in labelled), jobs)
    model = TrainedModel(trainer.counts(), start.features, start.combiner, start.training_data)
    return _with_summary(model, ledger, lineage, parent=base, learned=learned, relabelled=0)


def update(ledger: Ledger, model: TrainedModel, jobs: int = 1) -> UpdateResult:
    """``model`` plus the ledger entries after its lineage's ``seq``, learned incrementally."""
    lineage = Lineage.of(model)
    upto = ledger.last_seq()
    if upto <= lineage.seq:
        return UpdateResult(None)
    trainer = Trainer.resume(model)
    changes = ((c.digest, c.before, c.after) for c in ledger.changes(lineage.seq, upto))
    stats: Counter[str] = Counter()
    follows = model.features.tokenizer.profile == SITE
    calibration = OnlineCalibration(model.combiner, SITE_CALIBRATION, _recent(model.training_data)) if follows else None
    learned = _learn(trainer, ledger, changes, jobs, stats, calibration)
    combiner, training_data = model.combiner, model.training_data
    if calibration is not None:
        calibration.refit()
        combiner = calibration.combiner
        training_data = {
            **training_data,
            "calibration": {
                **training_data.get("calibration", {}),
                "recent": calibration.state(),
                "follows_site": True,
            },
        }
    updated = TrainedModel(trainer.counts(), model.features, combiner, training_data)
    summary = _with_summary(
        updated, ledger, Lineage(lineage.base, upto), model.version, learned - stats["relabelled"], stats["relabelled"]
    )
    return UpdateResult(summary, learned - stats["relabelled"], stats["relabelled"])


def _learn(
    trainer: Trainer,
    ledger: Ledger,
    changes: Iterable[tuple[str, str | None, str]],
    jobs: int,
    stats: Counter[str] | None = None,
    calibration: OnlineCalibration | None = None,
) -> int:
    """Learn ``(digest, before, after)`` changes in batches; a ``before`` label is also unlearned.

    With a ``calibration``, each message new to the model is first scored by the counts
    learned so far and its evidence observed: the mail the calibration is refitted on.
    """
    done = 0
    items = with_tokens(changes, trainer.features, _data(ledger), jobs)
    items = iter(progress(items, "learning"))
    while batch := list(islice(items, BATCH)):
        rows = trainer.hashed([tokens for _, tokens in batch])
        if calibration is not None and min(trainer.nb.class_count_) >= 1:
            scorer = SpamModel.build("", trainer.features, calibration.combiner, trainer.counts())
            for i, ((_, before, after), _) in enumerate(batch):
                if before is None:
                    calibration.recent.append((scorer.evidence_of(rows[i].indices), after == "spam"))
        trainer.learn_hashed(rows, [after for (_, _, after), _ in batch])
        moved = [i for i, ((_, before, _), _) in enumerate(batch) if before is not None]
        if moved:
            unlearn(trainer, rows[moved], [before for (_, before, _), _ in batch if before is not None])
        if stats is not None:
            stats["relabelled"] += len(moved)
        done += len(batch)
    return done


def _recent(training_data: dict[str, Any]) -> list[tuple[float, bool]]:
    """The calibration window a model's sidecar kept (malformed entries are dropped, not trusted)."""
    kept = training_data.get("calibration")
    recent = kept.get("recent", []) if isinstance(kept, dict) else []
    out: list[tuple[float, bool]] = []
    for pair in recent if isinstance(recent, list) else []:
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(x, (int, float)) for x in pair)
            and math.isfinite(pair[0])
        ):
            out.append((float(pair[0]), bool(pair[1])))
    return out


def unlearn(trainer: Trainer, rows: sparse.csr_matrix, labels: list[str]) -> None:
    """Take hashed messages out of the class they were learned in: the exact inverse of learning them."""
    trainer.nb.partial_fit(
        rows, np.asarray(labels), classes=np.array(CLASSES), sample_weight=np.full(rows.shape[0], -1.0)
    )


def _data(ledger: Ledger) -> Callable[[tuple[str, str | None, str]], bytes]:
    return lambda item: ledger.message(item[0])


def _with_summary(
    model: TrainedModel, ledger: Ledger, lineage: Lineage, parent: str, learned: int, relabelled: int
) -> TrainedModel:
    data = {key: value for key, value in model.training_data.items() if key not in ("lineage", "ledger")}
    data.update(
        {
            "lineage": lineage.as_dict(),
            "ledger": {"path": str(ledger.path), "seq": lineage.seq, "current_labels": ledger.counts(lineage.seq)},
            "parent": parent,
            "learned": learned,
            "relabelled": relabelled,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return TrainedModel(model.counts, model.features, model.combiner, data)
