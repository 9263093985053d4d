"""Rule management: per-file compilation, the compiled cache, keeping the last good rules, rules check."""

import os
import time
import warnings

import pytest
import yara

from mailward.envelope import Envelope
from mailward.errors import ArtifactError
from mailward.evidence import Category
from mailward.message import ContentObject, ParsedMessage
from mailward.signatures.check import rules_check_main
from mailward.signatures.hashes import HashList
from mailward.signatures.ruleset import UNREADABLE, Origin, RuleSet, Source, compile_file, fingerprint, marker
from mailward.signatures.yara_rules import YaraDetector
from real_parts import require
from support.mail import EICAR
from support.mail import mime_mail as message

GOOD = 'rule Marker_One { meta: severity = "medium" category = "phishing" strings: $a = "marker-one" condition: $a }\n'
OTHER = 'rule Marker_Two { strings: $a = "marker-two" condition: $a and filename endswith ".txt" }\n'
BROKEN = 'rule Broken { strings: $a = "x" condition: $b }\n'


def write(directory, name, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def matches(ruleset, data, name="a.txt"):
    obj = ContentObject(name, data, names=(name,))
    evidence = YaraDetector(ruleset, HashList.load([])).inspect(ParsedMessage(headers=(), objects=(obj,)), Envelope())
    return {f.name for f in evidence.findings}


def test_broken_file_is_reported_and_skipped(tmp_path):
    rules = tmp_path / "rules"
    write(rules, "good.yar", GOOD)
    write(rules, "broken.yar", BROKEN)
    loaded = RuleSet.load_or_keep([("local", rules)], tmp_path / "state")
    assert loaded.origin is Origin.COMPILED
    assert [f.namespace for f in loaded.broken] == ["local/broken"] and "undefined string" in loaded.broken[0].errors[0]
    assert matches(loaded, b"xx marker-one xx") == {"local/good:Marker_One"}


def test_meta_sets_category_and_severity_and_externals_are_passed(tmp_path):
    write(tmp_path / "rules", "good.yar", GOOD + OTHER)
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    obj = ContentObject("m > a.txt", b"marker-one marker-two", names=("dir/a.txt",))
    [one, two] = sorted(
        YaraDetector(loaded, HashList.load([])).inspect(ParsedMessage(headers=(), objects=(obj,)), Envelope()).findings,
        key=lambda f: f.name,
    )
    assert (one.category, one.severity.name) == (Category.PHISHING, "MEDIUM")
    assert two.name == "local/good:Marker_Two" and two.location == "m > a.txt"
    assert matches(loaded, b"marker-two", "a.doc") == set()


def test_second_load_comes_from_the_cache(tmp_path):
    write(tmp_path / "rules", "good.yar", GOOD)
    first = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    second = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    assert (first.origin, second.origin) == (Origin.COMPILED, Origin.CACHED)
    assert second.files == first.files
    assert any(p.name.endswith(".yarc") and yara.YARA_VERSION in p.name for p in (tmp_path / "state").iterdir())
    assert matches(second, b"marker-one") == {"local/good:Marker_One"}


def test_bad_edit_keeps_the_last_good_rules(tmp_path):
    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    write(rules, "other.yar", OTHER)
    RuleSet.load_or_keep([("local", rules)], state)
    write(rules, "good.yar", GOOD.replace("condition: $a", "condition: $zz"))  # the bad edit
    kept = RuleSet.load_or_keep([("local", rules)], state)
    assert kept.origin is Origin.KEPT and [f.namespace for f in kept.broken] == ["local/good"]
    assert matches(kept, b"marker-one") == {"local/good:Marker_One"}  # still armed
    again = RuleSet.load_or_keep([("local", rules)], state)  # a fresh worker
    assert again.origin is Origin.KEPT and matches(again, b"marker-one")
    write(rules, "good.yar", GOOD.replace("marker-one", "marker-new"))  # fixed
    fixed = RuleSet.load_or_keep([("local", rules)], state)
    assert fixed.origin is Origin.COMPILED and matches(fixed, b"marker-new") == {"local/good:Marker_One"}


def test_bad_edit_without_a_cache_keeps_the_live_rules(tmp_path):
    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    write(rules, "other.yar", OTHER)
    live = RuleSet.load_or_keep([("local", rules)], state)
    os.chmod(state, 0o777)  # the cache is not private any more: never used again
    write(rules, "good.yar", BROKEN)
    kept = RuleSet.load_or_keep([("local", rules)], state, previous=live)
    assert kept.origin is Origin.KEPT and matches(kept, b"marker-one") == {"local/good:Marker_One"}
    alone = RuleSet.load_or_keep([("local", rules)], state)
    assert alone.origin is Origin.COMPILED and matches(alone, b"marker-one") == set()


def test_nothing_compiles_is_an_error(tmp_path):
    write(tmp_path / "rules", "broken.yar", BROKEN)
    with pytest.raises(ArtifactError):
        RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")


def test_untrusted_cache_is_not_loaded(tmp_path):
    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    RuleSet.load_or_keep([("local", rules)], state)
    os.chmod(state, 0o777)
    assert RuleSet.load_or_keep([("local", rules)], state).origin is Origin.COMPILED


@pytest.mark.parametrize(
    "manifest", ["{}", "[]", '{"bundle": 7, "files": []}', '{"bundle": "x", "files": [{}]}', "not json"]
)
def test_malformed_cache_manifest_is_a_cache_miss(tmp_path, manifest, caplog):
    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    RuleSet.load_or_keep([("local", rules)], state)
    for path in state.glob("*.json"):  # every manifest and the last-good record
        path.write_text(manifest)
    loaded = RuleSet.load_or_keep([("local", rules)], state)
    assert loaded.origin is Origin.COMPILED and matches(loaded, b"marker-one") == {"local/good:Marker_One"}
    assert RuleSet.load_or_keep([("local", rules)], state).origin is Origin.CACHED  # rewritten whole


def test_cache_owned_by_the_service_user_is_trusted_and_by_others_not(tmp_path):
    import pwd

    from mailward.trust import TrustedOwners

    require(os.geteuid() == 0, "changing a file's owner needs root")  # CI runs the suite as root: never skipped
    nobody = pwd.getpwnam("nobody")
    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    RuleSet.load_or_keep([("local", rules)], state)
    for path in (state, *state.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    assert RuleSet.load_or_keep([("local", rules)], state, owners=TrustedOwners.of("nobody")).origin is Origin.CACHED
    assert RuleSet.load_or_keep([("local", rules)], state).origin is Origin.COMPILED


def test_scan_with_a_malformed_cache_manifest_scans(tmp_path):
    import json
    import subprocess
    import sys

    state = tmp_path / "state"
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(attachments=[("eicar.com", EICAR)]))
    config = tmp_path / "mailward.toml"
    config.write_text(f'state_dir = "{state}"\n[reputation]\nenabled = false\n')
    command = [sys.executable, "-m", "mailward.cli.main", "--config", str(config), "scan", "--json", str(eml)]
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    for path in (state / "rules").glob("*.json"):
        path.write_text("{}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["action"] == "reject"


def test_change_on_disk_is_noticed(tmp_path):
    write(tmp_path / "rules", "good.yar", GOOD)
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    assert not loaded.changed_on_disk()
    time.sleep(0.01)
    write(tmp_path / "rules", "new.yar", OTHER)
    assert loaded.changed_on_disk()


def test_one_fingerprint_and_marker_for_the_rules_on_disk(tmp_path):
    """The bundle, the metric and the daemon's watcher all name the rules with these two."""
    directories = [("local", tmp_path / "rules")]
    write(tmp_path / "rules", "good.yar", GOOD)
    seen, named = marker(directories), fingerprint(directories)
    assert (marker(directories), fingerprint(directories)) == (seen, named)  # unchanged tree
    assert RuleSet.load_or_keep(directories, tmp_path / "state").fingerprint == named
    write(tmp_path / "rules", "good.yar", GOOD.replace("marker-one", "marker-1"))
    assert marker(directories) != seen and fingerprint(directories) != named
    assert marker([("gone", tmp_path / "missing")]) == UNREADABLE


def test_yara_timeout_is_unchecked_not_clean(tmp_path):
    write(
        tmp_path / "rules",
        "slow.yar",
        "rule Slow { strings: $a = /a[^x]{1,30}a[^x]{1,30}a[^x]{1,30}z/ condition: $a }\n",
    )
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    obj = ContentObject("big.txt", b"a" * 30_000_000, names=("big.txt",))
    evidence = YaraDetector(loaded, HashList.load([]), timeout=1).inspect(
        ParsedMessage(headers=(), objects=(obj,)), Envelope()
    )
    assert [(f.category, f.name) for f in evidence.findings] == [(Category.UNCHECKED, "yara-timeout")]


def test_rules_check_reports_errors_hits_and_speed(tmp_path, capsys):
    rules, benign = tmp_path / "rules", tmp_path / "benign"
    write(rules, "good.yar", GOOD)
    write(rules, "broken.yar", BROKEN)
    write(benign, "1.eml", message(body="nothing to see\n").decode())
    assert rules_check_main([str(rules), "--benign", str(benign)]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "undefined string" in out and "broken.yar" in out and "baseline" in out

    (rules / "broken.yar").unlink()
    assert rules_check_main([str(rules), "--benign", str(benign)]) == 0
    capsys.readouterr()
    write(benign, "2.eml", message(body="this has marker-one in it\n").decode())
    assert rules_check_main([str(rules), "--benign", str(benign)]) == 1
    assert "FP" in capsys.readouterr().out
    (benign / "2.eml").unlink()
    write(benign, "words.txt", "lorem ipsum dolor sit amet " * 10_000)  # any file counts as one object
    write(rules, "slow.yar", "rule Slow { strings: $a = /[a-z]{1,25}[0-9]/ condition: $a }\n")  # no atoms: ~3 MB/s
    assert rules_check_main([str(rules), "--benign", str(benign), "--min-speed", "50"]) == 1
    assert "SLOW" in capsys.readouterr().out


def test_rules_check_json(tmp_path, capsys):
    import json

    rules, benign = tmp_path / "rules", tmp_path / "benign"
    write(rules, "good.yar", GOOD)
    write(benign, "hit.eml", message(body="marker-one\n").decode())
    assert rules_check_main([str(rules), "--benign", str(benign), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [entry] = report["files"]
    assert entry["hits"] and entry["hits"][0]["rule"] == "Marker_One" and entry["mb_per_s"] > 0
    assert report["summary"]["baseline_mb_per_s"] > 0 and not report["ok"]


def test_rules_check_without_benign_and_with_a_missing_directory(tmp_path, capsys):
    write(tmp_path / "rules", "good.yar", GOOD)
    assert rules_check_main([str(tmp_path / "rules")]) == 0
    assert rules_check_main([str(tmp_path / "nowhere")]) == 2


def test_shipped_rules_find_eicar(tmp_path):
    from mailward.signatures import load_rules
    from support.unpack import settings_for

    loaded = load_rules(settings_for(tmp_path))
    assert not loaded.broken and matches(loaded, EICAR, "eicar.com") == {"mailward/eicar:EICAR_Test_File"}


def test_yara_deadline_leaves_the_rest_unchecked(tmp_path):
    write(tmp_path / "rules", "good.yar", GOOD)
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    objects = tuple(ContentObject(f"f{i}.txt", b"marker-one", names=(f"f{i}.txt",)) for i in range(3))
    evidence = YaraDetector(loaded, HashList.load([]), timeout=1, deadline=0.5).inspect(
        ParsedMessage(headers=(), objects=objects), Envelope()
    )
    assert [(f.category, f.name, f.location) for f in evidence.findings] == [
        (Category.UNCHECKED, "yara-deadline", "f0.txt")
    ]


def test_include_is_refused_so_every_byte_that_decides_the_rules_is_fingerprinted(tmp_path):
    # An included file (here outside the rule directory) would decide the rules without being part of
    # the fingerprint or the marker: its edits would never be picked up, even by a restart.
    rules, shared = tmp_path / "rules", tmp_path / "shared"
    write(shared, "common.inc", GOOD)
    write(rules, "main.yar", f'include "{shared / "common.inc"}"\n')
    write(rules, "other.yar", OTHER)
    loaded = RuleSet.load_or_keep([("local", rules)], tmp_path / "state")
    assert [f.namespace for f in loaded.broken] == ["local/main"] and "includes" in loaded.broken[0].errors[0]
    assert matches(loaded, b"marker-one marker-two") == {"local/other:Marker_Two"}


def test_file_rewritten_while_loading_never_caches_other_content_under_its_fingerprint(tmp_path, monkeypatch):
    import mailward.signatures.ruleset as ruleset

    rules, state = tmp_path / "rules", tmp_path / "state"
    write(rules, "good.yar", GOOD)
    write(rules, "other.yar", OTHER)
    real = ruleset.compile_file

    def editor_truncates_first(source, *args):  # an in-place save lands between hashing and compiling
        if source.path.name == "good.yar":
            source.path.write_text("")
        return real(source, *args)

    monkeypatch.setattr(ruleset, "compile_file", editor_truncates_first)
    during = RuleSet.load_or_keep([("local", rules)], state)
    monkeypatch.setattr(ruleset, "compile_file", real)
    assert matches(during, b"marker-one") == {"local/good:Marker_One"}  # what was hashed is what was compiled
    write(rules, "good.yar", GOOD)  # the save completes with the same content
    after = RuleSet.load_or_keep([("local", rules)], state)
    assert after.origin is Origin.CACHED and after.fingerprint == during.fingerprint
    assert matches(after, b"marker-one") == {"local/good:Marker_One"}


def test_a_latin1_rule_file_compiles_to_its_own_bytes(tmp_path):
    """libyara reads rule files as bytes: "caf\\xe9" matches the Latin-1 byte, never UTF-8's two."""
    write(tmp_path / "rules", "good.yar", GOOD)
    (tmp_path / "rules" / "latin1.yar").write_bytes(b'rule Cafe { strings: $a = "caf\xe9" condition: $a }\n')
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    assert loaded.broken == () and loaded.rules is not None
    assert [m.rule for m in loaded.rules.match(data=b"a caf\xe9 b")] == ["Cafe"]
    assert loaded.rules.match(data="a café b".encode()) == []


def test_errors_and_warnings_name_the_rule_file_not_its_private_copy(tmp_path):
    write(tmp_path / "rules", "bad.yar", "rule Bad { condition: nonsense_word }\n")
    bad, rules = compile_file(Source("local/bad", tmp_path / "rules" / "bad.yar"))
    assert rules is None and str(tmp_path / "rules" / "bad.yar") in bad.errors[0]
    assert "mailward-rules-" not in bad.errors[0]
    write(tmp_path / "rules", "slow.yar", "rule Slow { strings: $a = { 00 ?? ?? ?? ?? 00 } condition: $a }\n")
    slow, rules = compile_file(Source("local/slow", tmp_path / "rules" / "slow.yar"))
    assert rules is not None and slow.warnings and "mailward-rules-" not in slow.warnings[0]
    assert str(tmp_path / "rules" / "slow.yar") in slow.warnings[0]


def test_string_past_libyaras_match_limit_leaves_the_object_unchecked(tmp_path):
    # libyara stops recording a string's matches at 1,000,000 (a warning only): #a reads 1,000,000 here.
    write(tmp_path / "rules", "count.yar", 'rule Few_A { strings: $a = "A" condition: #a < 1050000 }\n')
    loaded = RuleSet.load_or_keep([("local", tmp_path / "rules")], tmp_path / "state")
    obj = ContentObject("many.txt", b"A" * 1_100_000, names=("many.txt",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # as in the milter: a Python warning stops nothing
        evidence = YaraDetector(loaded, HashList.load([])).inspect(
            ParsedMessage(headers=(), objects=(obj,)), Envelope()
        )
    [unchecked] = evidence.of(Category.UNCHECKED)
    assert (unchecked.name, unchecked.location) == ("yara-too-many-matches", "many.txt")
    assert "local/count:Few_A $a" in unchecked.detail
