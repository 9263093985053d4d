"""A throwaway service user, and a way for it to run this Python (which may live under a 0700 /root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from real_parts import require

SERVICE_USER = "mailward-svc"


def ensure_service_user(name: str = SERVICE_USER) -> tuple[pwd.struct_passwd, bool]:
    """The passwd entry of ``name`` (created as a system user if missing) and whether it was created."""
    require(os.geteuid() == 0 and shutil.which("useradd") is not None, "creating a service user needs root")
    try:
        return pwd.getpwnam(name), False
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name), True


def remove_service_user(name: str = SERVICE_USER) -> None:
    subprocess.run(["userdel", name], capture_output=True)


def interpreter_reachable(base: Path) -> tuple[str, ...]:
    """A command prefix under which a service user can run this Python.

    Here the interpreter may live under /root (mode 0700, e.g. pyenv), which no
    service user can enter. Rather than change /root, the process gets a private
    mount namespace in which /root is a 0755 directory holding only a bind of
    the interpreter's tree; the host's mounts are untouched.
    """
    interpreter = Path(sys.executable).resolve()
    if interpreter.parts[:2] != ("/", "root"):
        return ()
    require(shutil.which("unshare") is not None, "unshare (util-linux) is needed to run Python from /root")
    top = interpreter.parts[2]
    shadow = base / "root-shadow"
    (shadow / top).mkdir(parents=True, exist_ok=True)
    os.chmod(shadow, 0o755)
    script = f'mount --bind "/root/{top}" "{shadow}/{top}" && mount --rbind "{shadow}" /root && exec "$@"'
    return ("unshare", "--mount", "sh", "-c", script, "sh")


def run_cli(prefix: tuple[str, ...], config: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`mailward` as its own root process (a privilege drop must never happen inside the test process)."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "mailward.cli.main", "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, f"mailward {' '.join(argv)}: {done.stderr[-2000:]}"
    return done
