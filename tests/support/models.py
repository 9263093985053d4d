"""Small real spam models for tests: trained in milliseconds on generated mail."""

from __future__ import annotations

from mailward.config import LimitSettings
from mailward.message import parse_message
from mailward.models.artifact import TrainedModel
from mailward.models.features import FeatureSettings
from mailward.models.tokens import tokenize
from mailward.training.trainer import TrainingSettings, train
from support.mail import bare_mail

SMALL = FeatureSettings(n_features=2**12)

HAM_LINES = [
    "the meeting agenda for tomorrow is attached",
    "please review the patch before the release",
    "minutes of the project call and next steps",
    "can you send me the quarterly report draft",
    "the build failed again on the test machine",
    "lunch on thursday with the new team members",
]
SPAM_LINES = [
    "buy cheap viagra now with free shipping",
    "you won the lottery claim your prize money",
    "limited time offer click here to order",
    "lose weight fast with this miracle pill",
    "earn money from home no experience needed",
    "cheap meds online without prescription",
]


def tokens(raw: bytes) -> list[str]:
    return tokenize(parse_message(raw, LimitSettings()))


def corpus(copies: int = 4) -> list[tuple[str, list[str], str]]:
    """``(key, tokens, label)`` examples: every line in a few numbered variants."""
    out = []
    for i in range(copies):
        for j, line in enumerate(HAM_LINES):
            out.append((f"ham-{i}-{j}", tokens(bare_mail(line.split()[1], f"{line} {i}")), "ham"))
        for j, line in enumerate(SPAM_LINES):
            out.append((f"spam-{i}-{j}", tokens(bare_mail(line.split()[1], f"{line} {i}")), "spam"))
    return out


def small_model(copies: int = 4) -> TrainedModel:
    return train(corpus(copies), TrainingSettings(features=SMALL, calibration_share=3))
