"""Autolearn: unlabelled mail the live model is very sure about, into the ledger, with guards.

Learning from a model's own verdicts reinforces its mistakes and invites
poisoning (a sender who gets a few innocuous messages learned as ham, then
sends spam with the same words). So only the confident extremes are taken
(``learning.autolearn_ham_below`` / ``autolearn_spam_above``), and:

* a message that already has a label keeps it: analysts' labels always win;
* at most ``autolearn_per_sender`` messages per From: registrable domain and run;
* a class may not grow beyond ``autolearn_max_ratio`` times the other in the
  ledger, so a flood of one kind cannot tip the model's priors.

What is taken is recorded in the ledger with the source ``autolearn:<origin>``
and the analyst ``autolearn``, where ``mailward train update`` learns it like
any other label (and an analyst can still relabel it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr

from ..config import LearningSettings
from ..message import header_block
from ..models.classifier import SpamModel
from ..models.tokens import registrable_domain
from .ledger import Ledger, digest_of
from .sources import LabelledMail
from .streams import progress, with_tokens

ANALYST = "autolearn"


def autolearn(
    ledger: Ledger, mails: Iterable[LabelledMail], model: SpamModel, rules: LearningSettings, jobs: int = 1
) -> Counter[str]:
    """Record the confident, guarded verdicts on ``mails``; counts of what was taken and why not."""
    classes = ledger.counts()
    per_sender: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for mail, tokens in progress(with_tokens(mails, model.features, jobs=jobs), "autolearn"):
        digest = digest_of(mail.data)
        if ledger.current_label(digest) is not None:
            outcomes["already-labelled"] += 1
            continue
        score = model.assess_tokens(tokens).score
        label = "ham" if score < rules.autolearn_ham_below else "spam" if score >= rules.autolearn_spam_above else ""
        if not label:
            outcomes["not-confident"] += 1
            continue
        sender = sender_domain(mail.data)
        if per_sender[sender] >= rules.autolearn_per_sender:
            outcomes["sender-cap"] += 1
            continue
        other = "spam" if label == "ham" else "ham"
        if classes[label] + 1 > rules.autolearn_max_ratio * max(classes[other], 1):
            outcomes["class-balance"] += 1
            continue
        ledger.record(mail.data, label, f"autolearn:{mail.origin}", ANALYST)
        classes[label] += 1
        per_sender[sender] += 1
        outcomes[f"learned-{label}"] += 1
    return outcomes


def sender_domain(raw: bytes) -> str:
    """The registrable domain of the From: address, lower-cased ("" when there is none).

    Registrable, not as written: a sender who varies subdomains (``d1.example``, ``d2.example``...)
    would otherwise get a fresh allowance with each.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_block(raw) + b"\n\n")
    address = parseaddr(str(headers.get("From", "")))[1]
    return registrable_domain(address.rpartition("@")[2])
