"""The registry: candidates, atomic promotion the milter's real loader follows, and rollback."""

from __future__ import annotations

import shutil

import pytest

from mailward.models.artifact import SIDECAR, load_artifact, save_artifact
from mailward.models.loader import ModelLoader
from mailward.training.learning import rebuild, record
from mailward.training.ledger import Ledger
from mailward.training.registry import SHIPPED, Registry, RegistryError
from mailward.training.sources import read_sets
from support.quarantine import FakeClock
from support.training import FIXTURES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two trained models: one from the folder layout, one with the mbox and Maildir added."""
    base = tmp_path_factory.mktemp("trained")
    registry = Registry(base / "models", shipped_dir=None)
    with Ledger(base / "ledger.sqlite") as ledger:
        record(ledger, read_sets([str(FIXTURES / "layout")]), "ann")
        first = registry.add(rebuild(ledger, registry))
        record(ledger, read_sets([str(FIXTURES / "reports-spam.mbox"), str(FIXTURES / "maildir/ham")]), "ann")
        second = registry.add(rebuild(ledger, registry))
    return base / "models" / "versions", first, second


@pytest.fixture
def registry(tmp_path, models):
    versions, _, _ = models
    shutil.copytree(versions, tmp_path / "models" / "versions")
    return Registry(tmp_path / "models", shipped_dir=None)


def test_promotion_is_picked_up_by_the_running_loader_and_rollback_too(registry, models):
    _, first, second = models
    registry.promote(first.version, "ann", {"test": True})
    clock = FakeClock()
    loader = ModelLoader(registry.root, shipped=False, check_interval=1.0, clock=clock)
    assert loader.current().version == first.version
    assert registry.live_link.is_symlink() and registry.live_version() == first.version

    record = registry.promote(second.version, "ann", {"test": True})
    assert record.previous == first.version
    clock.now += 2
    assert loader.current().version == second.version

    assert registry.rollback_target() == first.version
    registry.promote(first.version, "bob", {"rollback": True}, action="rollback")
    clock.now += 2
    assert loader.current().version == first.version
    assert [h.action for h in registry.history()] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback_target()  # first was promoted onto nothing


def test_a_hand_placed_live_model_is_kept_for_rollback(registry, models, tmp_path):
    _, first, second = models
    save_artifact(registry.load(first.version), registry.root)  # a plain spam.json, as build_default writes
    assert not registry.live_link.is_symlink()
    shutil.rmtree(registry.versions_dir / first.version)
    assert registry.live_version() == first.version
    registry.promote(second.version, "ann", {})
    assert (registry.versions_dir / first.version / SIDECAR).exists()
    assert registry.rollback_target() == first.version


def test_the_first_promotion_over_the_shipped_model_can_be_rolled_back(models, tmp_path):
    versions, first, second = models
    shipped = save_artifact(load_artifact(versions / second.version / SIDECAR, versions), tmp_path / "shipped")
    (tmp_path / "models" / "versions").mkdir(parents=True)
    shutil.copytree(versions / first.version, tmp_path / "models" / "versions" / first.version)
    registry = Registry(tmp_path / "models", shipped_dir=tmp_path / "shipped")
    assert registry.live_version() == SHIPPED
    assert registry.promote(first.version, "ann", {}).previous == shipped.version
    assert registry.rollback_target() == shipped.version
    registry.promote(registry.rollback_target(), "ann", {"rollback": True}, action="rollback")
    assert registry.live().version == shipped.version


def test_keep_live_copies_a_hand_placed_model_into_versions(registry, models):
    _, first, _ = models
    save_artifact(registry.load(first.version), registry.root)
    shutil.rmtree(registry.versions_dir / first.version)
    assert registry.keep_live() == first.version
    assert registry.load(first.version).class_counts == first.class_counts
    with pytest.raises(RegistryError, match="no shipped model"):
        Registry(registry.root.parent / "empty", shipped_dir=None).keep_live()


def test_listing_and_refusals(registry, models):
    _, first, second = models
    assert {v.version for v in registry.versions()} == {first.version, second.version}
    assert registry.live_version() == ""
    for bad in ("nb-000000000000", "../x", ""):
        with pytest.raises(RegistryError):
            registry.promote(bad, "ann", {})
    assert not registry.live_link.exists()


def test_adding_the_same_model_twice_keeps_one_version(registry, models):
    _, first, _ = models
    again = registry.add(registry.load(first.version))
    assert again.version == first.version
    assert len(list(registry.versions_dir.iterdir())) == 2


def test_a_malformed_promotion_history_is_a_clear_error(registry, models):
    registry.promote(models[1].version, "ann", {"forced": True})
    with open(registry.root / "promotions.jsonl", "a") as fh:
        fh.write('{"action": "promote"}\n')
    with pytest.raises(RegistryError, match=r"promotions.jsonl:2: not a promotion record"):
        registry.history()


def test_a_version_the_loader_would_refuse_is_listed_with_the_reason(registry, models):
    import json

    sidecar = registry.versions_dir / models[1].version / SIDECAR
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), format_version=1)))
    [refused] = [v for v in registry.versions() if v.refused]
    assert refused.version == models[1].version and "--trust-pickle" in refused.refused


def test_the_registry_keeps_its_files_private_to_the_service_user(models, tmp_path):
    """README: directories 0700, files 0600; the shipped model's 0644 copies included."""
    import os
    import stat

    versions, first, second = models
    shipped = tmp_path / "shipped"
    save_artifact(load_artifact(versions / second.version / SIDECAR, versions), shipped, mode=0o644)
    registry = Registry(tmp_path / "models", shipped_dir=shipped)
    candidate = registry.add(load_artifact(versions / first.version / SIDECAR, versions))
    registry.promote(candidate.version, "ann", {})  # keeps the shipped one as a version too
    registry.promote(registry.rollback_target(), "ann", {"rollback": True}, action="rollback")
    modes = {
        str(path.relative_to(registry.root)): stat.S_IMODE(os.lstat(path).st_mode)
        for path in [registry.root, *registry.root.rglob("*")]
        if not path.is_symlink()
    }
    assert {second.version, first.version} <= {p.name for p in registry.versions_dir.iterdir()}
    assert {name: mode for name, mode in modes.items() if mode not in (0o700, 0o600)} == {}
    assert modes["promotions.jsonl"] == 0o600 and modes["versions"] == 0o700
