"""The service files in contrib/ as tests read them: systemd's unit syntax and `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from real_parts import require

CONTRIB = Path(__file__).resolve().parent.parent.parent / "contrib"
VENV_IN_UNIT = "/opt/mailward/.venv"  # where the shipped units expect the virtualenv


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=Value lines, repeatable keys, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify_units(directory: Path, names: tuple[str, ...], name: str) -> None:
    """Copy the shipped ``names`` into ``directory`` (pointing at this virtualenv) and have systemd verify ``name``.

    systemd-analyze is a required part: a host without it would let a broken unit pass."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed (apt: systemd)")
    for unit in names:  # a timer needs its service beside it
        text = (CONTRIB / "systemd" / unit).read_text()
        (directory / unit).write_text(text.replace(VENV_IN_UNIT, str(Path(sys.executable).parent.parent)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(directory / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr  # unknown keys only warn
