"""`mailward train` and `mailward model`, in process, on the fixture sets: from labelled mail to a
promoted, evaluated model and back."""

from __future__ import annotations

import re
import shutil

import pytest

from mailward.actor import Actor
from mailward.evidence import Label
from mailward.quarantine.sqlite import SqliteStore
from mailward.source import MessageSource
from real_parts import require
from support.quarantine import envelope, spam_case
from support.training import FIXTURES, config, copy_fixtures, run, run_json

FIGURES = {"n", "auc", "fp_rate", "fn_rate"}


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def train(state, *sets: str) -> str:
    report = run_json(state, "train", *sets)
    assert report["candidate"], report
    return report["candidate"]


def test_train_evaluate_promote_and_roll_back(state, tmp_path):
    layout = str(FIXTURES / "layout")
    report = run_json(state, "train", layout)
    assert report["recorded"] == {"new": 11} and report["rebuilt"]
    assert report["class_counts"] == {"ham": 5, "spam": 6}
    first = report["candidate"]

    code, out = run(state, "model", "evaluate", layout)
    assert code == 1 or "no live" in out  # nothing is live before a promotion
    figures = run_json(state, "model", "evaluate", layout, "--model", first, "--plot", str(tmp_path / "e.png"))
    assert figures.keys() >= FIGURES and figures["n"] == 11
    assert figures["auc"] == 1.0 and figures["fp_rate"] == 0.0  # it learned exactly these
    assert sum(figures["confusion"]["spam"].values()) == 6
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out = run(state, "model", "promote", first)
    assert code == 3 and "no evaluation set" in out  # never live unevaluated without --force
    code, out = run(state, "model", "promote", first, "--on", layout)
    assert code == 0 and f"promoted {first}" in out
    assert "AUC 1, FP rate 0%, FN rate 0%" in out and not re.search(r"\d\.\d{5,}", out)
    assert run_json(state, "model", "list")["live"] == first

    more = [str(FIXTURES / "reports-spam.mbox"), str(FIXTURES / "maildir/ham")]
    update = run_json(state, "train", "--update", *more)
    assert (update["learned"], update["relabelled"], update["rebuilt"]) == (6, 0, False)
    second = update["candidate"]
    compared = run_json(state, "model", "compare", second, str(FIXTURES / "list.tsv"))
    assert compared.keys() >= FIGURES and compared["n"] == 5
    assert compared["live"]["model"] == first and compared["candidate"]["model"] == second
    code, out = run(state, "model", "compare", second, str(FIXTURES / "list.tsv"))
    assert code == 0 and re.search(r"candidate - live: AUC [+-]\d[\d.e+-]*,", out)
    assert re.search(r"FP rate [+-]?\d[\d.e+-]* points, FN rate [+-]?\d[\d.e+-]* points", out)
    assert not re.search(r"\d\.\d{5,}", out)  # 4 significant digits, never raw floats
    assert run(state, "model", "promote", second, "--on", str(FIXTURES / "list.tsv"))[0] == 0

    code, out = run(state, "model", "rollback")
    assert code == 0 and f"rolled back to {first}" in out
    listing = run_json(state, "model", "list")
    assert listing["live"] == first
    assert [h["action"] for h in listing["history"]] == ["promote", "promote", "rollback"]


def test_promotion_refuses_a_worse_candidate_unless_forced(state, tmp_path):
    sets = copy_fixtures(tmp_path)
    good = train(state, str(sets / "layout"))
    assert run(state, "model", "promote", good, "--on", str(sets / "layout"))[0] == 0
    # An analyst mix-up: the same mail labelled the other way round, in a fresh ledger.
    other = tmp_path / "other" / "state"
    (sets / "layout" / "ham").rename(sets / "layout" / "was-h")
    (sets / "layout" / "spam").rename(sets / "layout" / "ham")
    (sets / "layout" / "was-h").rename(sets / "layout" / "spam")
    bad = train(other, str(sets / "layout"))
    shutil.copytree(other / "models" / "versions" / bad, state / "models" / "versions" / bad)

    evaluation_set = str(FIXTURES / "layout")
    config(state, f'[learning]\nevaluation_set = "{evaluation_set}"\n')
    code, out = run(state, "model", "promote", bad)
    assert code == 3 and "worse than live" in out and "ROC AUC" in out
    assert run_json(state, "model", "list")["live"] == good
    code, out = run(state, "model", "promote", bad, "--force")
    assert code == 0 and "forced past" in out
    assert run_json(state, "model", "list")["live"] == bad


@pytest.mark.parametrize("kept", [(), ("ham",), ("spam",)], ids=["empty", "ham only", "spam only"])
def test_promotion_refuses_an_evaluation_set_that_cannot_judge_unless_forced(state, tmp_path, kept):
    first = train(state, str(FIXTURES / "layout"))
    one_sided = tmp_path / "one-sided"
    for label in ("ham", "spam"):  # both folders, one or both of them empty
        (one_sided / label).mkdir(parents=True)
    for label in kept:
        shutil.copytree(FIXTURES / "layout" / label, one_sided / label, dirs_exist_ok=True)
    code, out = run(state, "model", "promote", first, "--on", str(one_sided))
    assert code == 3 and "cannot show the model is good" in out
    assert ("no ham" in out) == ("ham" not in kept) and ("no spam" in out) == ("spam" not in kept)
    assert run_json(state, "model", "list")["live"] == ""
    code, out = run(state, "model", "promote", first, "--on", str(one_sided), "--force")
    assert code == 0 and "forced past: evaluation set has no" in out
    compared = run_json(state, "model", "compare", first, str(one_sided))  # compare cannot judge on it either
    assert not compared["promotable"] and compared["regressions"][0].startswith("the set has no")


def test_the_shipped_model_is_promoted_by_name_after_evaluation(state):
    config(state, "[learning]\nmax_auc_drop = 1.0\nmax_fp_rate_rise = 1.0\n", shipped=True)  # no regressions
    first = train(state, str(FIXTURES / "layout"))
    assert run(state, "model", "promote", first, "--on", str(FIXTURES / "layout"))[0] == 0
    kept = run_json(state, "model", "list")["history"][0]["previous"]
    shutil.rmtree(state / "models" / "versions" / kept)  # as after an upgrade that ships another model
    code, out = run(state, "model", "promote", "shipped", "--on", str(FIXTURES / "layout"))
    assert code == 0, out
    listing = run_json(state, "model", "list")
    assert listing["history"][-1]["previous"] == first and listing["live"] != first


def test_train_update_learns_quarantine_labels_and_relabels(state):
    first = train(state, str(FIXTURES / "layout"))
    assert run(state, "model", "promote", first, "--force")[0] == 0
    store = SqliteStore(state / "quarantine")
    analyst = Actor("ann", "host")
    raw = [
        (FIXTURES / "reports-spam.mbox").read_bytes().split(b"\nFrom ")[0].split(b"\n", 1)[1],
        (FIXTURES / "layout/ham/02.eml").read_bytes(),
    ]
    ids = [store.put(MessageSource.of(r), envelope(), *spam_case()) for r in raw]
    store.record_label(ids[0], Label.SPAM, analyst)  # confirmed as spam: new to the model
    store.record_label(ids[1], Label.SPAM, analyst)  # learned as ham before: a changed label
    store.close()

    report = run_json(state, "train", "update")
    assert report["quarantine"] == {"new": 1, "changed": 1}
    assert (report["learned"], report["relabelled"]) == (1, 1)
    assert report["class_counts"] == {"ham": 4, "spam": 8}
    assert report["lineage"]["base"] == ""

    assert run(state, "model", "promote", report["candidate"], "--force")[0] == 0
    again = run_json(state, "train", "update")
    assert again["candidate"] is None and again["quarantine"] == {}
    rebuilt = run_json(state, "train", "update", "--rebuild")
    assert rebuilt["rebuilt"] and rebuilt["class_counts"] == {"ham": 4, "spam": 8}


def test_update_on_top_of_the_shipped_model_keeps_it_as_base(state):
    config(state, shipped=True)
    shipped = run_json(state, "model", "list")["live"]
    assert shipped == "shipped"
    report = run_json(state, "train", "--update", str(FIXTURES / "layout"))
    base = report["lineage"]["base"]
    assert base.startswith("nb-") and report["learned"] == 11
    versions = {v["version"] for v in run_json(state, "model", "list")["versions"]}
    assert {base, report["candidate"]} <= versions  # the shipped base is kept in the registry
    rebuilt = run_json(state, "train", "update", "--no-quarantine", "--rebuild", "--from", report["candidate"])
    assert rebuilt["candidate"] == report["candidate"]  # base + the same labels: the same counts


def test_record_only_keeps_user_reports_for_the_next_update(state):
    first = train(state, str(FIXTURES / "layout"))
    run(state, "model", "promote", first, "--force")
    report = run_json(
        state,
        "train",
        "--record-only",
        "--source",
        "user-report",
        "--analyst",
        "carol",
        f"spam:{FIXTURES / 'maildir/ham/cur/1700000001.M1P1.host:2,S'}",
    )
    assert report["recorded"] == {"new": 1} and report["candidate"] is None
    again = run_json(state, "train", "--record-only", f"spam:{FIXTURES / 'maildir/ham/cur/1700000001.M1P1.host:2,S'}")
    assert again["recorded"] == {"repeated": 1}
    update = run_json(state, "train", "update", "--no-quarantine")
    assert update["learned"] == 1 and update["class_counts"] == {"ham": 5, "spam": 7}


def test_replay_with_and_without_bogofilter(state):
    figures = run_json(state, "model", "replay", str(FIXTURES / "list.tsv"))
    assert figures.keys() >= FIGURES and figures["n"] == 5 and figures["profile"] == "site"
    assert figures["curve"][-1]["n"] == 5
    require(shutil.which("bogofilter") is not None, "bogofilter is not installed (scripts/apt-packages.txt)")
    both = run_json(state, "model", "replay", str(FIXTURES / "layout"), "--bogofilter")
    assert both["n"] == 11 and both["bogofilter"].keys() >= FIGURES and both["bogofilter"]["n"] == 11
    assert 0.0 <= both["bogofilter"]["auc"] <= 1.0
    assert both["bogofilter"]["thresholds"] == {"tag": 0.45, "spam": 0.99}  # its own cutoffs


def test_errors_are_reported_not_raised(state):
    code, _ = run(state, "train", "/nonexistent/set")
    assert code == 1
    code, _ = run(state, "model", "promote", "nb-000000000000", "--force")
    assert code == 1
    code, _ = run(state, "model", "rollback")
    assert code == 1


def test_training_on_an_empty_set_is_a_clear_error(state, tmp_path, capsys):
    for label in ("ham", "spam"):
        (tmp_path / "empty" / label).mkdir(parents=True)
    code, _ = run(state, "train", str(tmp_path / "empty"))
    assert code == 1 and "needs at least one ham and one spam" in capsys.readouterr().err


def test_training_refuses_a_ledger_others_could_have_written(state, capsys):
    import os

    layout = str(FIXTURES / "layout")
    train(state, layout)
    ledger = state / "ledger.sqlite"
    os.chmod(ledger, 0o666)
    code, _ = run(state, "train", layout)
    assert code != 0 and "writable by group or others" in capsys.readouterr().err
    os.chmod(ledger, 0o600)
    assert train(state, layout)
