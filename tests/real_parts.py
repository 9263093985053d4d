"""The rule for tests that need real parts (Postfix, root, PostgreSQL, bogofilter...)."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, why: str) -> None:
    """Skip when a real part is missing, except in CI where that is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required part missing in CI: {why}")
        pytest.skip(why)
