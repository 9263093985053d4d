"""The live model: shipped fallback, pick-up of a promoted model without restart, last good model kept."""

from __future__ import annotations

import json
import os

import pytest

from mailward.errors import ArtifactError
from mailward.models.artifact import SIDECAR, save_artifact
from mailward.models.loader import ModelLoader
from support.models import small_model


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def models():
    first = small_model(copies=3)
    second = small_model(copies=4)
    assert first.counts.class_count.sum() != second.counts.class_count.sum()
    return first, second


@pytest.fixture
def shipped(models, tmp_path):
    directory = tmp_path / "shipped"
    save_artifact(models[0], directory)
    return directory


def loader_for(directory, shipped_dir, clock, **kw) -> ModelLoader:
    return ModelLoader(directory, check_interval=5.0, clock=clock, shipped_dir=shipped_dir, **kw)


def test_empty_model_directory_uses_the_shipped_model(shipped, tmp_path):
    loader = loader_for(tmp_path / "models", shipped, Clock())
    assert loader.current().version == json.loads((shipped / SIDECAR).read_text())["model_version"]


def test_no_model_and_shipped_model_disabled_is_an_error(shipped, tmp_path):
    with pytest.raises(ArtifactError, match="no spam model"):
        loader_for(tmp_path / "models", shipped, Clock(), shipped=False)


def test_promoted_model_is_picked_up_after_the_check_interval(models, shipped, tmp_path):
    clock, directory = Clock(), tmp_path / "models"
    loader = loader_for(directory, shipped, clock)
    shipped_version = loader.current().version
    promoted = save_artifact(models[1], directory)
    clock.now += 4.9
    assert loader.current().version == shipped_version  # not looked at yet: costs a clock read only
    clock.now += 0.2
    assert loader.current().version == promoted.version


def test_refused_model_keeps_the_last_good_one_until_a_good_one_arrives(models, tmp_path, shipped, caplog):
    clock, directory = Clock(), tmp_path / "models"
    good = save_artifact(models[0], directory)
    loader = loader_for(directory, shipped, clock)
    assert loader.current().version == good.version
    meta = json.loads((directory / SIDECAR).read_text())
    (directory / SIDECAR).write_text(json.dumps(dict(meta, sha256="0" * 64)))
    clock.now += 10
    assert loader.current().version == good.version
    assert "refused" in caplog.text and "sha256" in caplog.text
    newer = save_artifact(models[1], directory)
    clock.now += 10
    assert loader.current().version == newer.version


def test_refused_model_at_start_falls_back_to_the_shipped_one(models, tmp_path, shipped):
    directory = tmp_path / "models"
    save_artifact(models[1], directory)
    meta = json.loads((directory / SIDECAR).read_text())
    (directory / SIDECAR).write_text(json.dumps(dict(meta, format_version=99)))
    loader = loader_for(directory, shipped, Clock())
    assert loader.current().version == json.loads((shipped / SIDECAR).read_text())["model_version"]
    with pytest.raises(ArtifactError, match="format version 99"):
        loader_for(directory, shipped, Clock(), shipped=False)


@pytest.mark.parametrize(
    "break_model",
    [
        lambda directory, meta: (directory / SIDECAR).write_text(json.dumps(dict(meta, training_data=[1, 2]))),
        lambda directory, meta: (
            (directory / meta["artifact"]).unlink(),
            (directory / meta["artifact"]).symlink_to(directory / meta["artifact"]),
        ),
    ],
    ids=["training_data a list", "payload symlink loop"],
)
def test_a_malformed_model_is_a_refusal_at_start_and_later(models, tmp_path, shipped, caplog, break_model):
    clock, directory = Clock(), tmp_path / "models"
    good = save_artifact(models[1], directory)
    loader = loader_for(directory, shipped, clock)
    meta = json.loads((directory / SIDECAR).read_text())
    break_model(directory, meta)
    os.utime(directory / SIDECAR, ns=(1, 1))  # a new sidecar identity, as a promotion brings
    clock.now += 10
    assert loader.current().version == good.version
    assert "new spam model refused" in caplog.text
    assert loader_for(directory, shipped, Clock()).current().version != good.version  # the shipped one
