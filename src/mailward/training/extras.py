"""Packages of the ``train`` extra, imported when a training command needs them.

A milter host installs only what scanning needs; plotting and progress bars are for
the analyst's machine, so a missing one is a clear error naming the extra, raised
where it is used and not at import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MailwardError


def import_extra(module: str, purpose: str) -> ModuleType:
    """``module``, or a MailwardError telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MailwardError(
            f"{purpose} needs the Python package {module.split('.')[0]}, which is not installed: "
            "pip install 'mailward[train]'"
        ) from exc
