"""Labelled mail for training and evaluation, read as a stream.

The developer corpus comes with an index (``source path label split sha256``,
tab-separated, gzip-compressed); its fixed ``split`` column keeps every reported
number on mail no model was trained or tuned on. Labels are ``ham``, ``spam``
and ``phish``; a binary filter counts phish as spam.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import MailwardError

LABELS = {"ham": "ham", "spam": "spam", "phish": "spam"}


class CorpusError(MailwardError):
    """A labelled set is unreadable, or a message does not match its index entry."""


@dataclass(frozen=True)
class LabelledMessage:
    path: Path
    label: str  # as the set gives it: ham, spam or phish
    source: str = ""
    sha256: str = ""
    split: str = ""  # train or test, as the corpus index fixes it

    @property
    def spam_label(self) -> str:
        """``ham`` or ``spam``: the class the model learns."""
        return LABELS[self.label]

    def read(self) -> bytes:
        data = self.path.read_bytes()
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise CorpusError(f"{self.path}: content does not match the sha256 in the index")
        return data


def index_messages(index: str | Path, corpus_dir: str | Path, split: str | None = None) -> Iterator[LabelledMessage]:
    """Messages listed in a corpus index, optionally only those of one ``split``, in index order."""
    corpus_dir = Path(corpus_dir)
    try:
        with gzip.open(index, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if split is not None and row["split"] != split:
                    continue
                if row["label"] not in LABELS:
                    raise CorpusError(f"{index}: unknown label {row['label']!r} for {row['path']}")
                yield LabelledMessage(
                    corpus_dir / row["path"], row["label"], row["source"], row["sha256"], row["split"]
                )
    except (OSError, EOFError, KeyError, csv.Error) as exc:
        raise CorpusError(f"{index}: not a readable corpus index ({exc})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
