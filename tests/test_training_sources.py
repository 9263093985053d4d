"""Labelled sets: every form yields the exact message bytes with the right label, in the set's order."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from mailward.training.corpus import CorpusError
from mailward.training.sources import LabelledSet, read_sets
from support.training import FIXTURES


def labels(spec: str, split: str = "") -> list[tuple[str, str]]:
    return [(Path(m.origin).name, m.label) for m in LabelledSet.parse(spec, split)]


def test_folder_layout_labels_by_nearest_labelled_folder_and_skips_grouping_folders():
    found = labels(str(FIXTURES / "layout"))
    assert ("00.eml", "phish") in found  # group/phish/00.eml
    assert sum(1 for _, lb in found if lb == "ham") == 5
    assert sum(1 for _, lb in found if lb == "spam") == 5
    assert "README.txt" not in {name for name, _ in found}  # loose file in a grouping folder
    assert len(found) == 11


def test_phish_is_learned_as_spam_and_bytes_are_exact():
    [mail] = [m for m in LabelledSet.parse(str(FIXTURES / "layout" / "group"))]
    assert mail.label == "phish" and mail.spam_label == "spam"
    assert mail.data == (FIXTURES / "layout" / "group" / "phish" / "00.eml").read_bytes()


def test_mbox_label_from_its_name_and_messages_without_the_from_line():
    mails = list(LabelledSet.parse(str(FIXTURES / "reports-spam.mbox")))
    assert [m.label for m in mails] == ["spam"] * 3
    assert all(m.data.startswith(b"From: ") for m in mails)
    assert b"Hot stock alert" in mails[0].data and mails[0].origin.endswith("#0")


def test_forced_label_overrides_the_name(tmp_path):
    mails = list(LabelledSet.parse(f"ham:{FIXTURES / 'reports-spam.mbox'}"))
    assert {m.label for m in mails} == {"ham"}


def test_maildir_in_delivery_order_across_cur_and_new_without_tmp():
    names = [name for name, _ in labels(str(FIXTURES / "maildir" / "ham"))]
    assert names == ["1700000001.M1P1.host:2,S", "1700000002.M2P2.host", "1700000003.M3P3.host:2,S"]


def test_tsv_list_keeps_line_order_and_relative_paths():
    assert labels(str(FIXTURES / "list.tsv")) == [
        ("00.eml", "spam"),
        ("00.eml", "ham"),
        ("00.eml", "phish"),
        ("1700000001.M1P1.host:2,S", "ham"),
        ("01.eml", "spam"),
    ]


def test_corpus_index_form_with_split(tmp_path):
    index = tmp_path / "index.tsv.gz"
    with gzip.open(index, "wt") as fh:
        fh.write("source\tpath\tlabel\tsplit\tsha256\n")
        fh.write(f"x\t{FIXTURES / 'layout/ham/00.eml'}\tham\ttrain\t-\n")
        fh.write(f"x\t{FIXTURES / 'layout/spam/00.eml'}\tspam\ttest\t-\n")
        fh.write(f"x\t{FIXTURES / 'layout/group/phish/00.eml'}\tphish\ttest\t-\n")
    assert [lb for _, lb in labels(str(index), "test")] == ["spam", "phish"]
    assert len(labels(str(index))) == 3


@pytest.mark.parametrize(
    "content, problem", [("junk\tlayout/ham/00.eml\n", "unknown label"), ("ham\tno/such.eml\n", "cannot read")]
)
def test_bad_lists_are_errors(tmp_path, content, problem):
    listing = tmp_path / "bad.tsv"
    listing.write_text(content.replace("layout", str(FIXTURES / "layout")))
    with pytest.raises(CorpusError, match=problem):
        list(LabelledSet.parse(str(listing)))


def test_a_set_without_any_label_is_refused(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "1.eml").write_bytes(b"Subject: hi\n\nhello\n")
    with pytest.raises(CorpusError, match="no label"):
        list(read_sets([str(folder)]))
    assert [m.label for m in read_sets([f"spam:{folder}"])] == ["spam"]


def test_missing_set_is_an_error():
    with pytest.raises(CorpusError, match="no such file"):
        LabelledSet.parse("ham:/nonexistent/set")
