"""Labelled sets of mail, read as one stream of ``(bytes, label)`` in the set's order.

Every command that takes a labelled ``SET`` accepts the same forms:

* ``list.tsv`` (or ``.tsv.gz``): ``label<TAB>path`` lines, paths relative to the
  list; ``#`` comments. A first line naming columns (``path`` and ``label``,
  like the corpus ``index.tsv.gz``) selects those columns, and ``--split``
  then keeps the rows of one ``split``.
* an mbox file (``*.mbox``, or any file starting with a ``From`` line);
* a Maildir (``cur`` and ``new``, in file-name order, which is delivery order);
* a directory of message files (``.eml``, or one message per file);
* a labelled folder layout such as the developer corpus: the label of a file is
  the nearest folder named after one (``ham``, ``easy_ham_2``, ``spam_2``,
  ``phish``...). A folder whose subfolders carry labels only groups them
  (``enron-spam/enron1/{ham,spam}``), so its loose files are skipped, not mislabelled.

``LABEL:PATH`` gives the whole set one label (``spam:reports.mbox``); a set
whose path alone names a label (``junk/spam.mbox``) needs no prefix.
Labels are ``ham``, ``spam`` and ``phish``; the model learns phish as spam.
Messages are read one at a time, so a set of any size costs the memory of one message.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import mailbox
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .corpus import LABELS, CorpusError

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z]+")
_NAME_LABELS = {"ham": "ham", "spam": "spam", "phish": "phish", "phishing": "phish"}


@dataclass(frozen=True)
class LabelledMail:
    """One message of a set: its exact bytes, the label the set gives and where it came from."""

    data: bytes
    label: str  # ham, spam or phish
    origin: str  # file path, or mbox path with "#index"

    @property
    def spam_label(self) -> str:
        """``ham`` or ``spam``: the class the model learns."""
        return LABELS[self.label]


@dataclass(frozen=True)
class LabelledSet:
    """A ``SET`` argument, resolved: where it is, which form, and the label it forces (if any)."""

    spec: str
    path: Path
    label: str = ""  # forced by LABEL:PATH or named by the path; "" = per message
    split: str = ""  # only rows of this split (corpus index lists)
    labelled: bool = True  # False: any mail, labels unknown ("" unless the set gives one)

    @classmethod
    def parse(cls, spec: str, split: str = "", labelled: bool = True) -> LabelledSet:
        label, sep, rest = spec.partition(":")
        if sep and label in LABELS:
            path, forced = Path(rest), label
        else:
            path, forced = Path(spec), ""
        if not path.exists():
            raise CorpusError(f"{spec}: no such file or directory")
        return cls(spec, path, forced, split, labelled)

    def __iter__(self) -> Iterator[LabelledMail]:
        path = self.path
        if path.is_dir():
            if _is_maildir(path):
                yield from self._one_label(_maildir_files(path), path)
            else:
                yield from self._tree(path)
        elif _is_list(path):
            yield from self._list(path)
        elif _is_mbox(path):
            yield from self._mbox(path)
        else:
            label = self._required_label(path)
            yield LabelledMail(_read(path), label, str(path))

    # -- forms -------------------------------------------------------------------------------

    def _required_label(self, path: Path) -> str:
        label = self.label or _label_of_names(path.resolve().parts[-2:])
        if not label and self.labelled:
            raise CorpusError(f"{self.spec}: no label; name the set LABEL:PATH (labels: {', '.join(LABELS)})")
        return label

    def _one_label(self, files: Iterator[Path], root: Path) -> Iterator[LabelledMail]:
        label = self._required_label(root)
        for path in files:
            yield LabelledMail(_read(path), label, str(path))

    def _mbox(self, path: Path) -> Iterator[LabelledMail]:
        label = self._required_label(path)
        box = mailbox.mbox(path, create=False)
        try:
            for index, key in enumerate(box.iterkeys()):
                yield LabelledMail(box.get_bytes(key), label, f"{path}#{index}")
        finally:
            box.close()

    def _tree(self, root: Path) -> Iterator[LabelledMail]:
        carriers = _label_carriers(root) if self.labelled else set()
        if not carriers:
            yield from self._one_label(_files_below(root), root)
            return
        skipped = 0
        for path in _files_below(root):
            label = self.label or _nearest_label(path.relative_to(root).parts[:-1], carriers, root)
            if not label:
                skipped += 1
                continue
            yield LabelledMail(_read(path), label, str(path))
        if skipped:
            log.warning("%s: %d files outside any ham/spam/phish folder skipped", self.spec, skipped)

    def _list(self, path: Path) -> Iterator[LabelledMail]:
        base = path.parent
        try:
            with _open_text(path) as fh:
                rows = csv.reader(
                    (line for line in fh if line.strip() and not line.startswith("#")),
                    delimiter="\t",
                    quoting=csv.QUOTE_NONE,
                )
                columns = {"label": 0, "path": 1}
                for number, row in enumerate(rows, 1):
                    if number == 1 and "path" in row and "label" in row:
                        columns = {name: row.index(name) for name in row}
                        continue
                    if self.split and "split" not in columns:
                        raise CorpusError(f"{path}: --split {self.split} given, but the list has no split column")
                    if self.split and "split" in columns and row[columns["split"]] != self.split:
                        continue
                    try:
                        label, name = row[columns["label"]].strip(), row[columns["path"]]
                    except IndexError:
                        raise CorpusError(f"{path}: row {number}: expected label<TAB>path") from None
                    if label not in LABELS:
                        raise CorpusError(f"{path}: row {number}: unknown label {label!r}")
                    message = base / name
                    yield LabelledMail(_read(message), self.label or label, str(message))
        except (OSError, EOFError, csv.Error, UnicodeDecodeError) as exc:
            raise CorpusError(f"{path}: not a readable label list ({exc})") from None


def read_sets(specs: list[str], split: str = "", labelled: bool = True) -> Iterator[LabelledMail]:
    """Every message of every set, set after set, each in its own order."""
    for spec in specs:
        yield from LabelledSet.parse(spec, split, labelled)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror}") from None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _is_list(path: Path) -> bool:
    return path.name.endswith((".tsv", ".tsv.gz"))


def _is_mbox(path: Path) -> bool:
    if path.suffix == ".mbox":
        return True
    with open(path, "rb") as fh:
        return fh.read(5) == b"From "


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _maildir_files(path: Path) -> Iterator[Path]:
    files = [p for sub in ("cur", "new") for p in (path / sub).iterdir() if p.is_file() and not p.name.startswith(".")]
    yield from sorted(files, key=lambda p: p.name)


def _files_below(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in a stable order; hidden files and Maildir ``tmp`` left out."""
    for current, dirs, files in os.walk(root):
        here = Path(current)
        dirs.sort()
        if _is_maildir(here) and "tmp" in dirs:
            dirs.remove("tmp")
        for name in sorted(files):
            if not name.startswith("."):
                yield here / name


def _label_of_name(name: str) -> str:
    labels = {_NAME_LABELS[w] for w in _WORD.findall(name.lower()) if w in _NAME_LABELS}
    return labels.pop() if len(labels) == 1 else ""


def _label_of_names(parts: tuple[str, ...]) -> str:
    """The label the set's own name, or else its folder's, gives (``spam.mbox``, ``ham/2024.mbox``)."""
    for name in reversed(parts):
        if label := _label_of_name(Path(name).stem if "." in name else name):
            return label
    return ""


def _label_carriers(root: Path) -> set[Path]:
    """Folders below ``root`` whose name is a label and that hold no labelled folder themselves."""
    labelled: set[Path] = set()
    for current, dirs, _ in os.walk(root):
        labelled.update(Path(current) / d for d in dirs if _label_of_name(d))
    return {d for d in labelled if not any(d in other.parents for other in labelled)}


def _nearest_label(parts: tuple[str, ...], carriers: set[Path], root: Path) -> str:
    for depth in range(len(parts), 0, -1):
        folder = root.joinpath(*parts[:depth])
        if folder in carriers:
            return _label_of_name(folder.name)
    return ""
