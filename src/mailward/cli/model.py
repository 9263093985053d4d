"""`mailward model`: evaluate, compare, promote and roll back spam models; replay a labelled stream.

    mailward model list
    mailward model evaluate SET [--model VERSION] [--json] [--plot FILE]
    mailward model compare CANDIDATE SET [--json] [--plot FILE]
    mailward model promote VERSION [--on SET] [--force]
    mailward model rollback
    mailward model replay SET [--json] [--bogofilter]

Thresholds are the configured inbound ``tag_threshold`` and ``spam_threshold``.
Promotion evaluates the candidate and the live model on ``--on SET`` (default:
``learning.evaluation_set``) and refuses a candidate worse beyond the configured
margins, or a set without ham or without spam to judge it on, unless ``--force``;
the milter picks the new model up within ``model.check_interval`` seconds.
Exit status: 0 done, 1 failed, 3 refused.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from ..actor import Actor
from ..config import Settings
from ..errors import ArtifactError

if TYPE_CHECKING:
    from ..models.artifact import TrainedModel
    from ..training.evaluate import Evaluation
    from ..training.registry import AnyRegistry

# scikit-learn and the training modules load in the handlers: other subcommands stay quick to start.

OK, FAILED, REFUSED = 0, 1, 3
LIVE = "live"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = commands.add_parser(
        "model", help="evaluate, compare, promote and roll back spam models", description=__doc__.split("\n\n")[0]
    )
    sub = m.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="model versions in the registry, and the promotion history")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_list)

    p = sub.add_parser("evaluate", help="FP/FN rates, ROC AUC, confusion and histogram on a labelled set")
    _set_args(p)
    p.add_argument("--model", default=LIVE, help="version to evaluate (default: the live model)")
    p.add_argument("--plot", metavar="FILE", help="write ROC and score distribution as PNG")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("compare", help="a candidate against the live model on the same set")
    p.add_argument("candidate", metavar="CANDIDATE")
    _set_args(p)
    p.add_argument("--plot", metavar="FILE", help="write both ROC curves and distributions as PNG")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("promote", help="make a version live (atomically), if it is not worse than live")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--on", metavar="SET", help="evaluation set (default: learning.evaluation_set)")
    p.add_argument("--split", default="", help="rows of this split only, for lists with a split column")
    p.add_argument("--force", action="store_true", help="promote even if worse, or without evaluation")
    p.add_argument("--analyst", default="")
    p.add_argument("--jobs", type=int, default=1)
    p.set_defaults(handler=_promote)

    p = sub.add_parser("rollback", help="make the model live before the last promotion live again")
    p.add_argument("--analyst", default="")
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("replay", help="online evaluation: score each message in order, then learn it")
    _set_args(p)
    p.add_argument("--bogofilter", action="store_true", help="run bogofilter through the same stream")
    p.add_argument(
        "--profile",
        choices=("site", "corpus"),
        default="site",
        help="feature profile and its tuned settings (default: site, as a site model learns)",
    )
    p.set_defaults(handler=_replay)


def _set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("set", metavar="SET")
    p.add_argument("--split", default="", help="rows of this split only, for lists with a split column")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--jobs", type=int, default=1, help="tokenizing processes")


def _load(registry: AnyRegistry, settings: Settings, name: str) -> TrainedModel:
    return registry.live() if name == LIVE else registry.load(name)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from ..models.classifier import Regime
    from ..training.registry import Registry

    registry = Registry.of(settings)
    versions = registry.versions()
    history = registry.history()
    live = next((v for v in versions if v.live and not v.refused), None)
    regime = Regime.of_training(live.training_data if live is not None else {})  # the shipped model: cold start
    if args.json:
        print(
            json.dumps(
                {
                    "live": registry.live_version(),
                    "versions": [v.__dict__ for v in versions],
                    "regime": {
                        "name": regime.name,
                        "spam_floor": regime.spam_floor,
                        "site_ham": regime.site_ham,
                        "site_spam": regime.site_spam,
                    },
                    "history": [h.as_dict() for h in history],
                },
                sort_keys=True,
            )
        )
        return OK
    print(f"live: {registry.live_version() or 'none'}, {regime.describe()}")
    for v in versions:
        if v.refused:
            print(f"! {v.version}  {_when(v.created)}  refused: {v.refused}")
            continue
        lineage = v.training_data.get("lineage", {})
        print(
            f"{'*' if v.live else ' '} {v.version}  {_when(v.created)}  classes {v.class_counts}  "
            f"base {lineage.get('base') or '-'} ledger seq {lineage.get('seq', '-')}  "
            f"{Regime.of_training(v.training_data).name}"
        )
    for h in history[-10:]:
        print(f"  {_when(h.at)} {h.action} {h.version} (was {h.previous or 'none'}) by {h.actor}")
    return OK


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.evaluate import Thresholds, measure, plot, score_set
    from ..training.registry import Registry
    from ..training.sources import read_sets

    registry = Registry.of(settings)
    model = _load(registry, settings, args.model)
    thresholds = Thresholds.inbound(settings)
    [scores] = score_set([model.scorer()], read_sets([args.set], args.split), args.jobs)
    evaluation = measure(scores, thresholds, model.version)
    if args.plot:
        plot([(model.version, scores)], thresholds, args.plot)
    print(json.dumps(evaluation.as_dict(), sort_keys=True) if args.json else evaluation.render())
    return OK


def _compare(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.evaluate import Thresholds, difference, headline, measure, plot, regressions, score_set, unjudged
    from ..training.registry import Registry
    from ..training.sources import read_sets

    registry = Registry.of(settings)
    candidate, live = registry.load(args.candidate), registry.live()
    thresholds = Thresholds.inbound(settings)
    cand_scores, live_scores = score_set(
        [candidate.scorer(), live.scorer()], read_sets([args.set], args.split), args.jobs
    )
    cand, current = measure(cand_scores, thresholds, candidate.version), measure(live_scores, thresholds, live.version)
    lacking = unjudged(cand)  # then no figure compares, and "not worse" would mean nothing
    problems = (
        [f"the set has {lacking}: nothing to judge by"] if lacking else regressions(cand, current, settings.learning)
    )
    if args.plot:
        plot(
            [(f"candidate {candidate.version}", cand_scores), (f"live {live.version}", live_scores)],
            thresholds,
            args.plot,
        )
    if args.json:
        doc = {
            "n": cand.n,
            "auc": cand.auc,
            "fp_rate": cand.fp_rate,
            "fn_rate": cand.fn_rate,
            "candidate": cand.as_dict(),
            "live": current.as_dict(),
            "regressions": problems,
            "promotable": not problems,
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(cand.render())
        print(current.render())
        print(f"candidate {candidate.version}: {headline(cand)}")
        print(f"live      {live.version}: {headline(current)}")
        print(difference(cand, current))
        print("worse than live: " + "; ".join(problems) if problems else "not worse than live beyond the margins")
    return OK


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.evaluate import Thresholds, difference, headline, measure, regressions, score_set, unjudged
    from ..training.registry import Registry
    from ..training.sources import read_sets

    registry = Registry.of(settings)
    actor = Actor.current(args.analyst).name
    evaluation_set = args.on or settings.learning.evaluation_set
    if not evaluation_set:
        if not args.force:
            print(
                "mailward model promote: refused: no evaluation set (--on SET or learning.evaluation_set); "
                "--force promotes unevaluated"
            )
            return REFUSED
        record = registry.promote(args.version, actor, {"forced": True, "evaluated": False})
        print(f"promoted {record.version} (was {record.previous or 'none'}), unevaluated (forced)")
        return OK
    candidate = registry.load(args.version)
    thresholds = Thresholds.inbound(settings)
    try:
        live = registry.live()
    except ArtifactError:
        live = None
    models = [candidate.scorer()] + ([live.scorer()] if live is not None else [])
    scored = score_set(models, read_sets([evaluation_set], args.split), args.jobs)
    cand = measure(scored[0], thresholds, candidate.version)
    current = measure(scored[1], thresholds, live.version) if live is not None else None
    lacking = unjudged(cand)
    if lacking and not args.force:
        print(
            f"mailward model promote: refused {candidate.version}: evaluation set {evaluation_set} has "
            f"{lacking}, so it cannot show the model is good (--force to promote anyway)"
        )
        return REFUSED
    problems = [f"evaluation set has {lacking}"] if lacking else []
    problems += regressions(cand, current, settings.learning) if current is not None else []
    summary = {
        "set": evaluation_set,
        "candidate": _brief(cand),
        "live": _brief(current) if current else None,
        "regressions": problems,
        "forced": bool(problems and args.force),
    }
    if problems and not args.force and live is not None:  # problems come only from comparing with live
        print(
            f"mailward model promote: refused {candidate.version}: worse than live {live.version} on "
            f"{evaluation_set}: " + "; ".join(problems) + " (--force to promote anyway)"
        )
        return REFUSED
    record = registry.promote(args.version, actor, summary)  # "shipped" is kept as a version first
    print(
        f"promoted {record.version} (was {record.previous or 'none'}): {headline(cand)}"
        + (f"; {difference(cand, current)}" if current is not None else "")
        + (" (forced past: " + "; ".join(problems) + ")" if problems else "")
    )
    return OK


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from ..training.registry import Registry

    registry = Registry.of(settings)
    target = registry.rollback_target()
    record = registry.promote(target, Actor.current(args.analyst).name, {"rollback": True}, action="rollback")
    print(f"rolled back to {record.version} (was {record.previous})")
    return OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from ..models.classifier import Combiner
    from ..training.evaluate import Thresholds, percent
    from ..training.replay import replay_bogofilter, replay_mailward
    from ..training.sources import read_sets
    from ..training.trainer import TrainingSettings

    # A site model starts from empty counts and an uncalibrated curve; the calibration then follows it.
    tuned = TrainingSettings.for_profile(args.profile)
    features, alpha, combiner = tuned.features, tuned.alpha, Combiner(tuned.evidence_per_side)
    thresholds = Thresholds.inbound(settings)
    results = [replay_mailward(read_sets([args.set], args.split), features, alpha, combiner, thresholds, args.jobs)]
    if args.bogofilter:
        results.append(replay_bogofilter(read_sets([args.set], args.split), total=results[0].evaluation.n))
    if args.json:
        doc = {
            **results[0].as_dict(),
            "profile": args.profile,
            **({"bogofilter": results[1].as_dict()} if args.bogofilter else {}),
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        for r in results:
            e = r.evaluation
            name = f"{r.filter} ({args.profile} profile)" if r.filter == "mailward" else r.filter
            print(
                f"{name}: {e.n} messages, cumulative (1-AUC) "
                f"{percent(None if e.auc is None else 1 - e.auc)}, "
                f"FP rate {percent(e.fp_rate)}, FN rate {percent(e.fn_rate)} "
                f"(spam at {e.thresholds.spam:g})"
            )
            print("  learning curve: " + ", ".join(f"{n}: {'-' if v is None else f'{v:.4g}%'}" for n, v in r.curve))
    return OK


def _brief(e: Evaluation) -> dict[str, object]:
    return {"model": e.model, "n": e.n, "auc": e.auc, "fp_rate": e.fp_rate, "fn_rate": e.fn_rate}


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))
