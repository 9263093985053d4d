"""Model files an attacker could have written: nothing in them executes, and untrusted ones are refused.

A payload that runs code when unpickled is planted with a sidecar whose sha256
matches it (integrity proves nothing about origin). The payload's
``__reduce__`` would create a marker file; every path that loads models (the
artifact loader, the hot-reloading loader, ``mailward scan``, a real scanning
worker) must refuse it without the marker ever appearing, and keep the last
good model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pwd
import subprocess
import sys
import zipfile

import joblib
import numpy as np
import pytest

from mailward.config import load_settings
from mailward.envelope import Envelope
from mailward.errors import ArtifactError
from mailward.models.artifact import SIDECAR, load_artifact, save_artifact
from mailward.models.loader import ModelLoader
from mailward.source import MessageSource
from mailward.training.estimator import feature_count
from mailward.trust import TrustedOwners
from mailward.workers import ScanPool
from real_parts import require
from support.mail import message
from support.models import small_model


class Exploit:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def joblib_payload(marker) -> bytes:
    out = io.BytesIO()
    joblib.dump({"classes": ["ham", "spam"], "class_count": Exploit(marker)}, out)
    return out.getvalue()


def npz_with_object_array(marker) -> bytes:
    """A well-formed .npz whose array is of dtype object: its data is a pickle."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        member = io.BytesIO()
        np.lib.format.write_array(member, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
        for name in ("class_count", "column_steps", "counts"):
            archive.writestr(f"{name}.npy", member.getvalue())
    return out.getvalue()


def plant(directory, payload: bytes, name: str, **sidecar) -> None:
    """Replace ``directory``'s model payload with ``payload`` under a sidecar that vouches for it."""
    meta = json.loads((directory / SIDECAR).read_text())
    (directory / name).write_bytes(payload)
    meta.update(artifact=name, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), **sidecar)
    tmp = directory / ".planted"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / SIDECAR)  # a new sidecar, as a promotion would bring


HOSTILE = {
    "format-1 joblib": (joblib_payload, "spam-0000.joblib", {"format_version": 1}, "joblib pickle.*convert"),
    "pickle named .npz": (lambda m: pickle.dumps(Exploit(m)), "spam-0001.npz", {}, "unreadable payload"),
    "object array in .npz": (npz_with_object_array, "spam-0002.npz", {}, "unreadable payload"),
}


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "loading a model file ran code from it"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_payload_with_matching_checksum_is_refused_without_running(case, model, tmp_path, marker):
    build, name, sidecar, refusal = HOSTILE[case]
    directory = tmp_path / "models"
    save_artifact(model, directory)
    plant(directory, build(marker), name, **sidecar)
    with pytest.raises(ArtifactError, match=refusal):
        load_artifact(directory / SIDECAR, directory)


def test_old_joblib_artifact_names_the_way_out(model, tmp_path, marker):
    directory = tmp_path / "models"
    save_artifact(model, directory)
    plant(directory, joblib_payload(marker), "spam-0000.joblib", format_version=1)
    with pytest.raises(ArtifactError) as refused:
        load_artifact(directory / SIDECAR, directory)
    assert "mailward train" in str(refused.value) and "--trust-pickle" in str(refused.value)


def arrays(model, **changes) -> bytes:
    from mailward.models.artifact import _npz

    base = {
        "class_count": model.counts.class_count,
        "column_steps": np.diff(model.counts.columns.astype(np.int64), prepend=0),
        "counts": model.counts.counts,
    }
    return _npz({key: value for key, value in {**base, **changes}.items() if value is not None})


@pytest.mark.parametrize(
    "changes, refusal",
    [
        ({"column_steps": None}, "not a spam model's arrays"),
        ({"extra": np.zeros(1)}, "not a spam model's arrays"),
        ({"counts": np.zeros((2, 2**14))}, "larger than 4096 columns need"),
        ({"column_steps": np.array([4095, 1]), "counts": np.ones((2, 2))}, "below 4096"),
        ({"column_steps": np.array([2**62, 2**62]), "counts": np.ones((2, 2))}, "below 4096"),
        ({"column_steps": np.array([5, 0, 1]), "counts": np.ones((2, 3))}, "distinct, sorted"),
        ({"column_steps": np.array([5, -1]), "counts": np.ones((2, 2))}, "distinct, sorted"),
        ({"column_steps": np.array([1, 2]), "counts": -np.ones((2, 2))}, "non-negative"),
        ({"column_steps": np.array([1, 2]), "counts": np.full((2, 2), 1e308)}, "no mail count is that large"),
        ({"class_count": np.array([1e308, 1e308])}, "no mail count is that large"),
        ({"class_count": np.array([0.0, 3.0])}, "both classes"),
        ({"counts": np.ones((2, 3), dtype=np.float32), "column_steps": np.array([1, 2, 3])}, "types and shapes"),
    ],
)
def test_payload_arrays_are_checked_before_use(model, tmp_path, changes, refusal):
    directory = tmp_path / "models"
    save_artifact(model, directory)
    plant(directory, arrays(model, **changes), "spam-0003.npz")
    with pytest.raises(ArtifactError, match=refusal):
        load_artifact(directory / SIDECAR, directory)


def test_an_array_header_that_lies_about_its_size_is_refused_before_allocating(model, tmp_path):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(arrays(model)), "r") as real, zipfile.ZipFile(out, "w") as forged:
        for name in ("class_count.npy", "column_steps.npy"):
            forged.writestr(name, real.read(name))
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (2, 2**40)})
        forged.writestr("counts.npy", member.getvalue() + bytes(16))  # 2 x 1 Ti float64 claimed, 16 bytes given
    directory = tmp_path / "models"
    save_artifact(model, directory)
    plant(directory, out.getvalue(), "spam-0004.npz")
    with pytest.raises(ArtifactError, match="larger than 4096 columns need"):
        load_artifact(directory / SIDECAR, directory)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_loader_keeps_the_last_good_model_when_a_hostile_one_arrives(case, model, tmp_path, marker, caplog):
    build, name, sidecar, _ = HOSTILE[case]
    directory = tmp_path / "models"
    good = save_artifact(model, directory)
    loader = ModelLoader(directory, shipped=False, check_interval=0.0)
    plant(directory, build(marker), name, **sidecar)
    assert loader.current().version == good.version
    assert "new spam model refused" in caplog.text


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_model_directory_writable_by_others_is_refused(mode, model, tmp_path):
    directory = tmp_path / "models"
    save_artifact(model, directory)
    os.chmod(directory, mode)
    with pytest.raises(ArtifactError, match="writable by group or others"):
        load_artifact(directory / SIDECAR, directory)


def test_model_file_writable_by_others_is_refused(model, tmp_path):
    directory = tmp_path / "models"
    saved = save_artifact(model, directory)
    payload = directory / json.loads((directory / SIDECAR).read_text())["artifact"]
    os.chmod(payload, 0o666)
    with pytest.raises(ArtifactError, match=f"{payload.name}: writable by group or others"):
        load_artifact(directory / SIDECAR, directory)
    os.chmod(payload, 0o644)
    assert load_artifact(directory / SIDECAR, directory).version == saved.version


@pytest.fixture
def other_user():
    require(os.geteuid() == 0, "changing a file's owner needs root")  # CI runs the suite as root: never skipped
    return pwd.getpwnam("nobody")


def test_model_owned_by_another_user_is_refused_unless_it_is_the_service_user(model, tmp_path, other_user):
    directory = tmp_path / "models"
    saved = save_artifact(model, directory)
    for path in (directory, *directory.iterdir()):
        os.chown(path, other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(ArtifactError, match=f"owned by uid {other_user.pw_uid}"):
        load_artifact(directory / SIDECAR, directory)
    assert load_artifact(directory / SIDECAR, directory, TrustedOwners.of("nobody")).version == saved.version


def test_versions_reached_through_the_live_link_are_checked_too(model, tmp_path):
    from mailward.training.registry import Registry

    registry = Registry(tmp_path / "models", shipped_dir=None)
    version = registry.add(model).version
    registry.promote(version, "ann", {"forced": True})
    os.chmod(registry.versions_dir / version, 0o777)
    with pytest.raises(ArtifactError, match="writable by group or others"):
        registry.live()


def test_untrusted_model_at_start_falls_back_to_the_shipped_one(model, tmp_path):
    directory, shipped = tmp_path / "models", tmp_path / "shipped"
    good = save_artifact(small_model(copies=3), shipped)
    save_artifact(model, directory)
    os.chmod(directory, 0o777)
    assert ModelLoader(directory, shipped_dir=shipped).current().version == good.version


def settings_for(state, **model):
    return load_settings(overrides={"state_dir": str(state), "reputation": {"enabled": False}, "model": model})


def test_mailward_scan_refuses_a_hostile_model_and_scans_with_the_shipped_one(model, tmp_path, marker):
    state = tmp_path / "state"
    save_artifact(model, state / "models")
    plant(state / "models", joblib_payload(marker), "spam-0000.joblib", format_version=1)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message()[1])
    config = tmp_path / "mailward.toml"
    config.write_text(f'state_dir = "{state}"\n[reputation]\nenabled = false\n')
    done = subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--config", str(config), "scan", "--json", str(eml)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "spam model refused" in done.stderr and "joblib pickle" in done.stderr
    assert json.loads(done.stdout.splitlines()[0])["spam_score"] is not None


def test_scanning_workers_never_run_a_planted_model(model, tmp_path, marker):
    state = tmp_path / "state"
    good = save_artifact(model, state / "models")
    pool = ScanPool(settings_for(state, check_interval=0.0), 1)
    try:
        assert pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60).spam.model_version == good.version
        for case in sorted(HOSTILE):  # the worker looks at every new sidecar (interval 0)
            build, name, sidecar, _ = HOSTILE[case]
            plant(state / "models", build(marker), name, **sidecar)
            assert pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60).spam.model_version == good.version
        pool.reload(settings_for(state, check_interval=0.0))  # fresh workers start with the hostile file live
        started = pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60).spam.model_version
        assert started not in ("", good.version)  # refused at start: the shipped model serves
    finally:
        pool.close()


def format_1(directory, model) -> None:
    """Rewrite ``directory``'s model as Mailward wrote it before: a joblib pickle of the counts."""
    out = io.BytesIO()
    joblib.dump(
        {
            "classes": ["ham", "spam"],
            "class_count": model.counts.class_count,
            "feature_count": feature_count(model.counts),
        },
        out,
        compress=("xz", 3),
    )
    plant(directory, out.getvalue(), "spam-0123456789abcdef.joblib", format_version=1)


def test_conversion_of_a_trusted_old_model_needs_the_explicit_flag_and_keeps_its_version(model, tmp_path):
    from mailward.models import convert

    directory = tmp_path / "models"
    saved = save_artifact(model, directory)
    format_1(directory, model)
    with pytest.raises(SystemExit):
        convert.main([str(directory)])  # no --trust-pickle: nothing is unpickled
    assert convert.main(["--trust-pickle", str(directory)]) == 0
    converted = load_artifact(directory / SIDECAR, directory)
    assert converted.version == saved.version and not list(directory.glob("*.joblib"))
    assert np.array_equal(converted.scorer().weights, saved.scorer().weights)
    assert convert.main(["--trust-pickle", str(directory)]) == 0  # already current: left alone


def test_conversion_refuses_an_untrusted_old_model(model, tmp_path, marker):
    from mailward.models import convert

    directory = tmp_path / "models"
    save_artifact(model, directory)
    plant(directory, joblib_payload(marker), "spam-0000.joblib", format_version=1)
    os.chmod(directory, 0o777)
    assert convert.main(["--trust-pickle", str(directory)]) == 1


def test_what_mailward_writes_is_trusted_even_under_a_group_writable_umask(model, tmp_path):
    from mailward.training.registry import Registry

    previous = os.umask(0o002)
    try:
        registry = Registry(tmp_path / "models", shipped_dir=None)
        version = registry.add(model).version
        registry.promote(version, "ann", {"forced": True})
    finally:
        os.umask(previous)
    assert registry.live().version == version
