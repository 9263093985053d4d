"""Which part of Mailward may import what, read from the source with ``ast``.

Imports inside functions count as much as those at the top of a module: a lazy import
is still a dependency. The boundaries are described in docs/architecture.md; a new
exception is added here, with the reason, or the import is moved.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

import mailward

SRC = Path(mailward.__file__).parent

# The service packages: each a part a host can do without, built on the core.
SERVICES = (
    "quarantine",
    "incidents",
    "training",
    "cli",
    "milter",
    "models",
    "signatures",
    "reputation",
    "unpack",
    "web",
    "review",
)

# Third-party packages confined to the parts that own them.
CONFINED = {
    "Milter": ("mailward.milter",),  # pymilter: only the adapter speaks the milter protocol
    "milter": ("mailward.milter",),
    "yara": ("mailward.signatures",),
    # scikit-learn and scipy: training, and the pickle converter; never scoring (a worker's start).
    "sklearn": ("mailward.training", "mailward.models.convert"),
    "scipy": ("mailward.training", "mailward.models.convert"),
    "joblib": ("mailward.models", "mailward.training"),
    # The web extra: only the web page (the CLI reaches it through a lazy import of mailward.web).
    "starlette": ("mailward.web",),
    "uvicorn": ("mailward.web",),
    "jinja2": ("mailward.web",),
    "argon2": ("mailward.web",),
    # The database drivers: only the database layer opens sessions (the stores write SQL through it).
    "sqlite3": ("mailward.db",),
    "psycopg": ("mailward.db",),
}

# Today's imports from a core module into a service package, each allowed for a reason.
# Anything else fails: move the type into the core or the call into the service.
CORE_EXCEPTIONS = {
    # parse_message walks the object tree below MIME (archives, uuencode, archive passwords).
    ("mailward.message", "mailward.unpack"),
    # The Inspector owns one Unpacker per process (libmagic handle, parser sandbox).
    ("mailward.pipeline", "mailward.unpack"),
}

# The composition root turns settings into running parts: it may build any service the milter
# runs (stores, incident response, detectors); the entry points and training stay out of its reach
# (tested below for every module).
COMPOSITION_ROOT = "mailward.runtime"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module (or module.name for ``from pkg import name``)
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, is_package: bool = False) -> list[Import]:
    """Every import in one module, relative ones resolved to dotted names."""
    tree = ast.parse(source)
    nested = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from pkg import sub`` may name a submodule: keep both readings.
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(name, t, node.lineno, id(node) in nested) for t in targets]
    return found


def all_imports() -> list[Import]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += imports_of(path.read_text(), module_name(path, SRC), path.name == "__init__.py")
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def core_modules() -> set[str]:
    """The modules directly in ``mailward/``: the vocabulary and plumbing every part shares."""
    return {f"mailward.{p.stem}" for p in SRC.glob("*.py") if p.stem != "__init__"}


def core_violations(found: list[Import], core: set[str], allowed=CORE_EXCEPTIONS) -> list[Import]:
    return [
        i
        for i in found
        if i.importer in core
        and i.importer != COMPOSITION_ROOT
        and any(within(i.target, f"mailward.{s}") for s in SERVICES)
        and not any(i.importer == who and within(i.target, what) for who, what in allowed)
    ]


def confined_violations(found: list[Import]) -> list[Import]:
    return [
        i
        for i in found
        for top, homes in CONFINED.items()
        if i.target.split(".")[0] == top and not any(within(i.importer, home) for home in homes)
    ]


@pytest.fixture(scope="module")
def found() -> list[Import]:
    imports = all_imports()
    assert len({i.importer for i in imports}) > 80, "the source tree was not found"
    return imports


def where(violations: list[Import]) -> list[str]:
    return sorted({f"{i.importer}:{i.line} imports {i.target}" for i in violations})


def test_function_level_and_relative_imports_are_seen():
    source = "from . import models\n\ndef later():\n    from .quarantine import release\n    import yara\n"
    found = imports_of(source, "mailward.policy")
    assert where(core_violations(found, {"mailward.policy"}, allowed=set())) == [
        "mailward.policy:1 imports mailward.models",
        "mailward.policy:4 imports mailward.quarantine",
        "mailward.policy:4 imports mailward.quarantine.release",
    ]
    assert where(confined_violations(found)) == ["mailward.policy:5 imports yara"]
    assert [i.in_function for i in found if i.target == "yara"] == [True]


def test_third_party_packages_stay_in_the_parts_that_own_them(found):
    assert where(confined_violations(found)) == []


def test_core_modules_import_no_service_package_beyond_the_listed_exceptions(found):
    assert where(core_violations(found, core_modules())) == []


def test_every_listed_exception_is_still_needed(found):
    """An exception nobody uses any more is removed, so it cannot hide a new import."""
    used = {
        (who, what) for who, what in CORE_EXCEPTIONS if any(i.importer == who and within(i.target, what) for i in found)
    }
    assert used == CORE_EXCEPTIONS


def test_nothing_imports_the_entry_points(found):
    """cli/ and milter/ are the top: the parts below never reach up into them."""
    upward = [
        i
        for i in found
        for top in ("mailward.cli", "mailward.milter")
        if within(i.target, top) and not within(i.importer, top)
    ]
    assert where(upward) == []


# The shared vocabulary: every part speaks it, and it speaks only of itself (and the standard library).
VOCABULARY = (
    "mailward.actor",
    "mailward.envelope",
    "mailward.errors",
    "mailward.evidence",
    "mailward.source",
    "mailward.verdict",
)

# The message flow: composed by the runtime, driven by the entry points. No part below imports them for a type.
FLOW = ("mailward.pipeline", "mailward.runtime", "mailward.screening", "mailward.workers")


def test_the_vocabulary_imports_only_itself(found):
    assert (
        where(
            [
                i
                for i in found
                if i.importer in VOCABULARY
                and within(i.target, "mailward")
                and not any(within(i.target, v) for v in VOCABULARY)
            ]
        )
        == []
    )


def test_the_message_flow_is_imported_only_by_the_entry_points_and_itself(found):
    """incidents/, quarantine/, metrics and the detectors take Outcome, MessageSource and ScanFailed
    from the vocabulary, never from the screener or the worker pool."""
    assert (
        where(
            [
                i
                for i in found
                if any(within(i.target, m) for m in FLOW)
                and not any(within(i.importer, top) for top in (*FLOW, "mailward.cli", "mailward.milter"))
            ]
        )
        == []
    )


def test_the_milter_translates_verdicts_and_decides_nothing(found):
    """Policy is decided in one place, the screener: the adapter only turns its typed outcomes into milter calls."""
    assert (
        where([i for i in found if within(i.importer, "mailward.milter") and within(i.target, "mailward.policy")]) == []
    )


def test_training_is_imported_only_by_itself_and_the_cli(found):
    """The milter never loads the offline training code."""
    assert (
        where(
            [
                i
                for i in found
                if within(i.target, "mailward.training")
                and not (within(i.importer, "mailward.training") or within(i.importer, "mailward.cli"))
            ]
        )
        == []
    )


def test_the_database_layer_imports_no_service_package_and_psycopg_only_lazily(found):
    """db.py sits under every store: it knows none of them (only leaf helpers: its file checks, the errors,
    the text every backend stores alike), and a host on SQLite never loads psycopg."""
    mine = [i for i in found if i.importer == "mailward.db" and within(i.target, "mailward")]
    leaves = ("mailward.dbfile", "mailward.errors", "mailward.textsafe")
    assert mine and where(mine) == where([i for i in mine if any(within(i.target, leaf) for leaf in leaves)])
    assert where([i for i in found if i.target.split(".")[0] == "psycopg" and not i.in_function]) == []


def test_the_sqlite_stores_run_without_psycopg(tmp_path):
    """Opening and using every SQLite store loads no psycopg (checked in a fresh interpreter)."""
    import subprocess
    import sys

    script = """
import sys
from pathlib import Path
from mailward.incidents.store import SqliteIncidentStore
from mailward.quarantine.sqlite import SqliteStore
from mailward.training.ledger import Ledger
from mailward.web.accounts import AccountStore

root = Path(sys.argv[1])
SqliteIncidentStore(root / "incidents.sqlite3").close()
SqliteStore(root / "quarantine").close()
Ledger(root / "ledger.sqlite").close()
AccountStore(root / "web.sqlite3").close()
print(sorted(name for name in sys.modules if name.split(".")[0] == "psycopg"))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_train_extra_packages_are_loaded_only_through_import_extra(found):
    """matplotlib and tqdm are optional: a plain import would fail on a milter host."""
    assert where([i for i in found if i.target.split(".")[0] in ("matplotlib", "tqdm")]) == []


def test_a_missing_train_extra_names_the_package_and_the_extra():
    from mailward.errors import MailwardError
    from mailward.training.extras import import_extra

    with pytest.raises(MailwardError, match=r"--plot needs the Python package no_such_package_x, .*mailward\[train\]"):
        import_extra("no_such_package_x.pyplot", "--plot")
    assert import_extra("json", "a test").dumps([]) == "[]"


def test_the_web_extra_is_reached_only_lazily_from_the_cli(found):
    """A host without the web extra still runs every other command: mailward.web is imported in functions."""
    outside = [i for i in found if within(i.target, "mailward.web") and not within(i.importer, "mailward.web")]
    assert where([i for i in outside if not (i.in_function and within(i.importer, "mailward.cli"))]) == []


def part_of(module: str, parts: set[str]) -> str | None:
    """``mailward.quarantine.store`` -> ``quarantine``; ``mailward.screening`` -> ``screening``; else None."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[0] == "mailward" and pieces[1] in parts else None


def part_cycles(found: list[Import], parts: set[str]) -> list[list[str]]:
    """The groups of parts (packages, core modules) that import each other, round a cycle; Tarjan's algorithm."""
    edges: dict[str, set[str]] = defaultdict(set)
    for i in found:
        importer, target = part_of(i.importer, parts), part_of(i.target, parts)
        if importer and target and importer != target:
            edges[importer].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(part: str) -> None:
        index[part] = low[part] = len(index)
        stack.append(part)
        for other in sorted(edges[part]):
            if other not in index:
                visit(other)
                low[part] = min(low[part], low[other])
            elif other in stack:
                low[part] = min(low[part], index[other])
        if low[part] == index[part]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == part:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for part in sorted(edges):
        if part not in index:
            visit(part)
    return sorted(groups)


def all_parts() -> set[str]:
    return {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()} | {m.split(".")[1] for m in core_modules()}


def test_a_cycle_through_a_function_level_import_is_found():
    """The review service once imported incidents/ while incidents/ imported quarantine/ inside a function."""
    found = imports_of("from ..incidents import open_incidents\n", "mailward.quarantine.service") + imports_of(
        "def send():\n    from ..quarantine.release import marked\n", "mailward.incidents.alerts"
    )
    assert part_cycles(found, {"incidents", "quarantine"}) == [["incidents", "quarantine"]]
    assert part_cycles(found[:2], {"incidents", "quarantine"}) == []


def test_no_part_imports_itself_round_a_cycle(found):
    """Packages and core modules form layers: no two reach each other, not even through a lazy import."""
    assert {"cli", "quarantine", "incidents", "review", "screening", "marks"} <= all_parts()
    assert part_cycles(found, all_parts()) == []


# The entry points: what an admin, an analyst or the MTA starts.
ENTRY_POINTS = ("mailward.cli", "mailward.milter", "mailward.web")


def test_review_sits_above_the_quarantine_and_incidents_and_below_the_entry_points(found):
    """The analysts' review is used by the CLI and the web page only, and builds on the stores and incident
    response, never on the message flow, the entry points or training."""
    used_by = [i for i in found if within(i.target, "mailward.review") and not within(i.importer, "mailward.review")]
    assert where([i for i in used_by if not any(within(i.importer, e) for e in ("mailward.cli", "mailward.web"))]) == []
    above = (*ENTRY_POINTS, *FLOW, "mailward.training")
    reaches_up = [i for i in found if within(i.importer, "mailward.review") and any(within(i.target, a) for a in above)]
    assert where(reaches_up) == []
    builds_on = {part_of(i.target, all_parts()) for i in found if within(i.importer, "mailward.review")}
    assert {"quarantine", "incidents"} <= builds_on
