"""YARA rule sources compiled file by file, bundled, cached per libyara version, kept on a bad edit.

Every rule file is compiled alone first, so one broken file is reported and
skipped instead of taking every rule down. ``include`` is refused (a file that
uses it does not compile): every rule file under the directories is loaded
already, and an included file would decide the rules without being part of
the fingerprint they are cached under or of the marker that notices edits. The good files are compiled into
one bundle (one namespace per file) and saved in Mailward's own state
directory, keyed by libyara version and a digest of the sources: workers load
that in milliseconds instead of compiling. Compiled rules are code for
libyara, so they are loaded only from a directory owned by root or the service
user that nobody else can write (:class:`~mailward.trust.TrustedOwners`); a
cache entry that is unreadable or malformed is a cache miss, never an error.

Reload is atomic: :meth:`RuleSet.load_or_keep` either returns a complete new
bundle or the last good one. When a file that was part of the last good
bundle stops compiling, the last good bundle stays live (origin ``KEPT``), so
a bad edit never disarms the rules that were protecting the mail.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yara

from ..errors import ArtifactError
from ..trust import TrustedOwners

log = logging.getLogger(__name__)

# Declared at compile time: libyara silently ignores externals it was not told about.
EXTERNALS: dict[str, str | int | bool] = {
    "filename": "",
    "filepath": "",
    "extension": "",
    "filetype": "",
    "owner": "",
    "mime_type": "",
    "depth": 0,
    "in_archive": False,
    "direction": "",
}
RULE_SUFFIXES = (".yar", ".yara")
SHIPPED_PREFIX = "mailward"


def shipped_rules_dir() -> Path:
    return Path(str(resources.files("mailward.signatures") / "rules"))


class Origin(str, Enum):
    COMPILED = "compiled"  # compiled now from the sources
    CACHED = "cached"  # the bundle for exactly these sources, from the state directory
    KEPT = "kept"  # sources regressed: the last good bundle stays live
    EMPTY = "empty"  # no rule files at all


@dataclass(frozen=True)
class RuleFile:
    """One source file and what compiling it alone said."""

    namespace: str
    path: str
    digest: str
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    rules: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Source:
    namespace: str
    path: Path


def discover(directories: list[tuple[str, Path]]) -> list[Source]:
    """Every rule file under each ``(prefix, directory)``; namespace = prefix/relative path."""
    found = []
    for prefix, directory in directories:
        if not directory.is_dir():
            raise ArtifactError(f"YARA rules directory {directory} does not exist")
        for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in RULE_SUFFIXES and p.is_file()):
            found.append(Source(f"{prefix}/{path.relative_to(directory).with_suffix('').as_posix()}", path))
    return found


def compile_file(source: Source, data: bytes | None = None) -> tuple[RuleFile, yara.Rules | None]:
    """Compile one file alone: its errors, warnings and rule count. ``data``: the file's bytes
    as already read and hashed (a file is compiled from what was hashed, never read again)."""
    data = source.path.read_bytes() if data is None else data
    digest = _digest(data)
    with _as_read({source.namespace: data}) as copies:
        copy, real = copies[source.namespace], str(source.path)
        try:
            rules = yara.compile(filepath=copy, externals=EXTERNALS, includes=False)
        except (yara.SyntaxError, yara.Error) as exc:
            return RuleFile(source.namespace, real, digest, errors=(str(exc).replace(copy, real),)), None
    warnings = tuple(str(w).replace(copy, real) for w in rules.warnings)  # they name the file too
    return RuleFile(source.namespace, real, digest, warnings=warnings, rules=sum(1 for _ in rules)), rules


@contextmanager
def _as_read(texts: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """Private copies of the rule files' bytes as read and hashed, by namespace, for libyara to compile.

    A file rewritten meanwhile cannot change what is compiled. Copies, not yara-python's text
    sources: those are str, handed on as UTF-8, so a Latin-1 rule file would change its bytes.
    """
    with tempfile.TemporaryDirectory(prefix="mailward-rules-") as directory:
        copies = {}
        for index, (namespace, data) in enumerate(texts.items()):
            copy = Path(directory) / f"{index}.yar"
            copy.write_bytes(data)
            copies[namespace] = str(copy)
        yield copies


Marker = tuple[tuple[str, int, int], ...]
UNREADABLE: Marker = (("", 0, -1),)  # a rules directory vanished or cannot be listed: a change too


def stamp(sources: list[Source]) -> Marker:
    """A cheap change marker (path, mtime, size) for polling."""
    out = []
    for s in sources:
        try:
            st = s.path.stat()
            out.append((str(s.path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(s.path), 0, -1))
    return tuple(out)


def marker(directories: list[tuple[str, Path]]) -> Marker:
    """The cheap (path, mtime, size) marker of the rule files on disk, for polling: no file is read."""
    try:
        return stamp(discover(directories))
    except ArtifactError:
        return UNREADABLE


def fingerprint(directories: list[tuple[str, Path]]) -> str:
    """The digest of the rules on disk that names their compiled bundle (contents, namespaces,
    libyara version, externals): the one answer to "which rules are these"; reads every file."""
    return _fingerprint({s.namespace: _digest(s.path.read_bytes()) for s in discover(directories)})


@dataclass(frozen=True)
class RuleSet:
    rules: yara.Rules | None
    files: tuple[RuleFile, ...]
    origin: Origin
    fingerprint: str
    directories: tuple[tuple[str, Path], ...] = ()
    sources_stamp: Marker = ()

    @property
    def broken(self) -> tuple[RuleFile, ...]:
        return tuple(f for f in self.files if not f.ok)

    def changed_on_disk(self) -> bool:
        """True when a rule file was added, removed or modified since this set was loaded."""
        return marker(list(self.directories)) != self.sources_stamp

    @classmethod
    def load_or_keep(
        cls,
        directories: list[tuple[str, Path]],
        cache_dir: Path,
        previous: RuleSet | None = None,
        owners: TrustedOwners | None = None,
    ) -> RuleSet:
        """The rules for ``directories``: from the cache, freshly compiled, or the last good ones.

        ``previous`` (the set live in this process, if any) is kept when the
        sources regressed and the state directory holds no last good bundle.
        ``owners`` may own the cache (default: root and this process's user).
        """
        sources = discover(directories)
        marker = stamp(sources)
        # Read once: the bytes hashed into the fingerprint are the bytes compiled and cached under it.
        texts = {s.namespace: s.path.read_bytes() for s in sources}
        fingerprint = _fingerprint({namespace: _digest(data) for namespace, data in texts.items()})
        common: dict[str, Any] = dict(fingerprint=fingerprint, directories=tuple(directories), sources_stamp=marker)
        if not sources:
            return cls(None, (), Origin.EMPTY, **common)
        cache = _Cache.open(cache_dir, owners or TrustedOwners.of())
        with cache.locked():
            hit = cache.load(fingerprint)
            if hit is not None:
                rules, files, kept = hit
                return cls(rules, files, Origin.KEPT if kept else Origin.CACHED, **common)
            compiled = [compile_file(s, texts[s.namespace]) for s in sources]
            files = tuple(f for f, _ in compiled)
            for f in files:
                if not f.ok:
                    log.error("YARA rule file %s does not compile, skipped: %s", f.path, "; ".join(f.errors))
            last = cache.last_good()
            known_good = set(last["namespaces"]) if last else set()
            if previous is not None:
                known_good |= {f.namespace for f in previous.files if f.ok}
            regressed = [f.namespace for f in files if not f.ok and f.namespace in known_good]
            if regressed:
                good_rules = cache.load_bundle(last["bundle"]) if last else None
                if good_rules is None and previous is not None and previous.rules is not None:
                    good_rules = previous.rules
                if good_rules is not None:
                    log.error("YARA sources regressed (%s): keeping the last good rules", ", ".join(regressed))
                    cache.remember_kept(fingerprint, last["bundle"] if last else "", files)
                    return cls(good_rules, files, Origin.KEPT, **common)
            good = {f.namespace: texts[f.namespace] for f in files if f.ok}
            if not good:
                raise ArtifactError(
                    "no YARA rule file compiles: " + "; ".join(f"{f.path}: {f.errors[0]}" for f in files)
                )
            try:
                with _as_read(good) as copies:
                    rules = yara.compile(filepaths=copies, externals=EXTERNALS, includes=False)
            except (yara.SyntaxError, yara.Error) as exc:
                fallback = cache.load_bundle(last["bundle"]) if last else None
                if fallback is None:
                    raise ArtifactError(f"YARA bundle does not compile: {exc}") from None
                log.error("YARA bundle does not compile (%s): keeping the last good rules", exc)
                return cls(fallback, files, Origin.KEPT, **common)
            cache.store(fingerprint, rules, files)
            return cls(rules, files, Origin.COMPILED, **common)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(digests: dict[str, str]) -> str:
    h = hashlib.sha256(f"libyara {yara.YARA_VERSION}\n{json.dumps(EXTERNALS, sort_keys=True)}\n".encode())
    for namespace in sorted(digests):
        h.update(f"{namespace}\0{digests[namespace]}\n".encode())
    return h.hexdigest()


class _Cache:
    """Compiled bundles in the state directory; a no-op when that directory cannot be trusted."""

    def __init__(self, directory: Path | None, owners: TrustedOwners):
        self.directory = directory
        self.owners = owners

    @classmethod
    def open(cls, directory: Path, owners: TrustedOwners) -> _Cache:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the rules cache %s (%s): compiling in memory", directory, exc.strerror)
            return cls(None, owners)
        reason = owners.problem(directory)
        if reason is not None:
            log.warning("rules cache %s is %s: not loading compiled rules from it", directory, reason)
            return cls(None, owners)
        return cls(directory, owners)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Workers starting together: one compiles, the others then load its bundle."""
        if self.directory is None:
            yield
            return
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _name(self, fingerprint: str) -> str:
        return f"bundle-{yara.YARA_VERSION}-{fingerprint[:24]}"

    def load(self, fingerprint: str) -> tuple[yara.Rules, tuple[RuleFile, ...], bool] | None:
        if self.directory is None:
            return None
        path = self.directory / f"{self._name(fingerprint)}.json"
        manifest = self._read_json(path)
        if manifest is None:
            return None
        try:
            bundle, kept = manifest["bundle"], manifest.get("kept", False)
            files = tuple(
                RuleFile(**dict(f, errors=tuple(f["errors"]), warnings=tuple(f["warnings"]))) for f in manifest["files"]
            )
            if not isinstance(bundle, str) or not isinstance(kept, bool):
                raise TypeError("bundle must be a name, kept true or false")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("rules cache manifest %s is malformed (%s): compiling again", path, exc)
            return None
        rules = self.load_bundle(bundle)
        if rules is None:
            return None
        return rules, files, kept

    def load_bundle(self, name: str) -> yara.Rules | None:
        if self.directory is None or not name or "/" in name:
            return None
        path = self.directory / name
        if not path.is_file() or not self.owners.trusts(path):
            return None
        try:
            return yara.load(str(path))
        except yara.Error as exc:
            log.warning("compiled rules %s do not load (%s)", path, exc)
            return None

    def last_good(self) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        path = self.directory / f"last-good-{yara.YARA_VERSION}.json"
        last = self._read_json(path)
        if last is None:
            return None
        if not (
            isinstance(last.get("bundle"), str)
            and isinstance(last.get("namespaces"), list)
            and all(isinstance(n, str) for n in last["namespaces"])
        ):
            log.warning("rules cache record %s is malformed: ignoring it", path)
            return None
        return last

    def store(self, fingerprint: str, rules: yara.Rules, files: tuple[RuleFile, ...]) -> None:
        if self.directory is None:
            return
        name = self._name(fingerprint)
        try:
            tmp = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".tmp-", delete=False)
            tmp.close()
            rules.save(tmp.name)
            os.replace(tmp.name, self.directory / f"{name}.yarc")
            self._write_json(f"{name}.json", {"bundle": f"{name}.yarc", "files": [asdict(f) for f in files]})
            self._write_json(
                f"last-good-{yara.YARA_VERSION}.json",
                {"bundle": f"{name}.yarc", "namespaces": [f.namespace for f in files if f.ok]},
            )
        except OSError as exc:
            log.warning("cannot save compiled rules in %s: %s", self.directory, exc)

    def remember_kept(self, fingerprint: str, bundle: str, files: tuple[RuleFile, ...]) -> None:
        """Later workers with the same (broken) sources load the kept bundle without recompiling."""
        if self.directory is None or not bundle:
            return
        try:
            self._write_json(
                f"{self._name(fingerprint)}.json", {"bundle": bundle, "kept": True, "files": [asdict(f) for f in files]}
            )
        except OSError as exc:
            log.warning("cannot write the rules manifest in %s: %s", self.directory, exc)

    def _write_json(self, name: str, doc: dict[str, Any]) -> None:
        if self.directory is None:  # callers check first; report it as the OSError they handle
            raise OSError("no rules cache directory")
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        """A trusted JSON object, or None (missing, untrusted, unreadable or not an object)."""
        try:
            if not self.owners.trusts(path):
                return None
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None
