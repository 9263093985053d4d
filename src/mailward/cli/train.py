"""`mailward train`: labelled mail into the label ledger, and a candidate model from it.

    mailward train SET...            record the sets' labels, rebuild from all current labels
    mailward train --update SET...   record them, then learn only what is new on top of the live model
    mailward train update            import analysts' quarantine labels, learn new ledger entries
    mailward train --autolearn SET...  unlabelled mail the live model is very sure about, guarded, then update

SET forms: see :mod:`mailward.training.sources` (TSV lists, mbox, Maildir,
.eml directories, ham/spam/phish folder layouts, ``LABEL:PATH``; a set literally
named ``update`` is written ``./update``). The new model is a *candidate* in the
registry: it reaches the milter only through ``mailward model promote``.
Training runs here, offline, never in the milter.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..actor import Actor
from ..config import Settings
from ..trust import TrustedOwners

if TYPE_CHECKING:
    from ..training.learning import UpdateResult
    from ..training.ledger import Ledger
    from ..training.registry import AnyRegistry

# scikit-learn and the training modules load in the handler: other subcommands stay quick to start.


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "train", help="record labelled mail and train a candidate spam model", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("sets", nargs="+", metavar="SET", help="labelled sets, or the single word 'update'")
    p.add_argument(
        "--update", action="store_true", help="learn only the new labels on top of the live model instead of rebuilding"
    )
    p.add_argument(
        "--rebuild", action="store_true", help="with 'update': recompute from the base model and all current labels"
    )
    p.add_argument("--from", dest="start", metavar="VERSION", help="update this version instead of the live one")
    p.add_argument("--record-only", action="store_true", help="only record the labels in the ledger")
    p.add_argument(
        "--autolearn",
        action="store_true",
        help="the sets are unlabelled: record what the live model is very sure about "
        "(learning.autolearn_*), then update",
    )
    p.add_argument("--no-quarantine", action="store_true", help="with 'update': do not import quarantine labels")
    p.add_argument("--split", default="", help="rows of this split only, for lists with a split column")
    p.add_argument("--source", default="", help="what the ledger records as the labels' source (default: path)")
    p.add_argument("--analyst", default="", help="who labelled (default: the OS user)")
    p.add_argument("--jobs", type=int, default=1, help="tokenizing processes")
    p.add_argument(
        "--profile",
        choices=("site", "corpus"),
        default=None,
        help="feature profile of a new model: 'site' (default; all headers, for the site's own mail) "
        "or 'corpus' (header allow-list, as the shipped model). An update keeps its model's "
        "profile unless this names another (or --autolearn: site); then it rebuilds",
    )
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.learning import UpdateResult, import_quarantine, rebuild, record
    from ..training.ledger import Ledger, ledger_path
    from ..training.registry import Registry
    from ..training.sources import read_sets
    from ..training.streams import progress

    registry = Registry.of(settings)
    ledger_file = ledger_path(settings)
    if ledger_file.exists():  # its labels and mail become the model: the model files' ownership rule
        TrustedOwners.of(settings.milter.user).require(ledger_file)
    with Ledger(ledger_file) as ledger:
        report: dict[str, Any] = {}
        if args.sets == ["update"]:
            if not args.no_quarantine:
                from ..quarantine import open_store

                with open_store(settings) as store:
                    report["quarantine"] = _outcomes(import_quarantine(ledger, store))
            result = _update(ledger, registry, settings, args)
        else:
            if args.autolearn:
                from ..training.autolearn import autolearn

                live = registry.live().scorer()
                recorded = autolearn(
                    ledger, read_sets(args.sets, args.split, labelled=False), live, settings.learning, args.jobs
                )
            else:
                analyst = Actor.current(args.analyst).name
                recorded = record(ledger, progress(read_sets(args.sets, args.split), "reading"), analyst, args.source)
            report["recorded"] = _outcomes(recorded)
            if args.record_only:
                result = UpdateResult(None)
            elif args.update or args.autolearn:
                result = _update(ledger, registry, settings, args)
            else:
                from ..training.trainer import TrainingSettings

                profile = TrainingSettings.for_profile(args.profile or "site")
                model = registry.add(rebuild(ledger, registry, jobs=args.jobs, settings=profile))
                result = UpdateResult(model, learned=model.training_data["learned"], rebuilt=True)
        report.update(_report(result, registry))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        for key in ("quarantine", "recorded"):
            if key in report:
                print(f"{key}: " + ", ".join(f"{n} {what}" for what, n in sorted(report[key].items())))
        print(report["summary"])
    return 0


def _update(ledger: Ledger, registry: AnyRegistry, settings: Settings, args: argparse.Namespace) -> UpdateResult:
    from ..training.learning import Lineage, UpdateResult, rebuild, update
    from ..training.registry import SHIPPED
    from ..training.trainer import TrainingSettings

    # The model updated becomes the base of what follows: kept in versions/, past package upgrades too.
    name = args.start or registry.keep_live()
    start = registry.load(registry.keep_shipped() if name == SHIPPED else name)
    wanted = args.profile or ("site" if args.autolearn else start.features.tokenizer.profile)
    if wanted != start.features.tokenizer.profile:
        # Counts of one profile's tokens cannot take another's: a new model from the ledger alone.
        model = registry.add(rebuild(ledger, registry, jobs=args.jobs, settings=TrainingSettings.for_profile(wanted)))
        return UpdateResult(model, learned=model.training_data["learned"], rebuilt=True)
    if args.rebuild:
        base = Lineage.of(start).base
        model = registry.add(rebuild(ledger, registry, base, jobs=args.jobs))
        return UpdateResult(model, learned=model.training_data["learned"], rebuilt=True)
    result = update(ledger, start, jobs=args.jobs)
    if result.model is None:
        return result
    return UpdateResult(registry.add(result.model), result.learned, result.relabelled)


def _outcomes(counts: Counter[Any]) -> dict[str, int]:
    return {getattr(k, "value", k): n for k, n in counts.items()}


def _report(result: UpdateResult, registry: AnyRegistry) -> dict[str, Any]:
    if result.model is None:
        return {"candidate": None, "summary": "nothing new to learn; no candidate model"}
    model = result.model
    how = (
        "rebuilt from all current labels"
        if result.rebuilt
        else f"{result.learned} learned, {result.relabelled} relabelled"
    )
    return {
        "candidate": model.version,
        "learned": result.learned,
        "relabelled": result.relabelled,
        "rebuilt": result.rebuilt,
        "class_counts": model.class_counts,
        "lineage": model.training_data["lineage"],
        "summary": f"candidate {model.version} ({how}; classes {model.class_counts}) saved in "
        f"{registry.versions_dir}; not live: compare with `mailward model compare "
        f"{model.version} SET`, then `mailward model promote {model.version}`",
    }
