"""Labelled mail to token lists, in bounded chunks, optionally spread over worker processes.

Parsing and tokenizing is most of the cost of training and evaluating. Chunks
keep memory flat (``Pool.imap`` would read the whole input ahead) and the
order of the set, which online evaluation depends on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Any, TypeVar

from ..models.features import FeatureSettings
from .extras import import_extra
from .trainer import message_tokens

CHUNK = 256
T = TypeVar("T")


def _tokens(args: tuple[bytes, FeatureSettings]) -> list[str]:
    return message_tokens(*args)


def with_tokens(
    items: Iterable[T], features: FeatureSettings, data: Callable[[Any], bytes] = lambda item: item.data, jobs: int = 1
) -> Iterator[tuple[T, list[str]]]:
    """``(item, tokens)`` for each item, in order; ``data(item)`` gives its message bytes."""
    items = iter(items)
    if jobs <= 1:
        for item in items:
            yield item, message_tokens(data(item), features)
        return
    with ProcessPoolExecutor(jobs) as pool:
        while chunk := list(islice(items, CHUNK)):
            yield from zip(chunk, pool.map(_tokens, [(data(i), features) for i in chunk], chunksize=16))


def progress(items: Iterable[T], what: str, total: int | None = None) -> Iterable[T]:
    """A progress bar on standard error when it is a terminal; the items unchanged otherwise."""
    if not sys.stderr.isatty():
        return items
    tqdm = import_extra("tqdm", "a progress bar").tqdm
    bar: Iterable[T] = tqdm(items, desc=what, total=total, unit=" msg", file=sys.stderr, dynamic_ncols=True)
    return bar
