"""The service files in contrib/ agree with each other and with the defaults, and the milter
speaks systemd's notify protocol and writes a private, rotatable log."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from harness.milter import MilterProcess, unix_listening
from mailward.config import LoggingSettings, load_settings, parse_milter_socket
from mailward.logs import PrivateLogFile, configure_logging
from support.contrib import CONTRIB, VENV_IN_UNIT, unit_entries, verify_units

UNIT = CONTRIB / "systemd" / "mailward-milter.service"


def service_config() -> dict:
    return tomllib.loads((CONTRIB / "mailward.toml").read_text())


def test_unit_is_valid_for_systemd(tmp_path):
    verify_units(tmp_path, (UNIT.name,), UNIT.name)


def test_unit_reloads_notifies_and_is_hardened():
    service = unit_entries(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecReload"] == ["/bin/kill -USR1 $MAINPID"]  # libmilter never takes SIGUSR1
    assert service["SuccessExitStatus"] == ["75"] and service["RestartForceExitStatus"] == ["75"]
    assert service["ExecStart"][0].split()[0] == f"{VENV_IN_UNIT}/bin/mailward-milter"
    assert "--check" in service["ExecStartPre"][0]
    for key, value in {
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
    }.items():
        assert service[key] == [value], key
    assert service["StateDirectory"] == ["mailward"]
    config = service_config()
    assert config["state_dir"] == "/var/lib/mailward"  # StateDirectory=mailward
    assert Path(config["logging"]["file"]).parent == Path("/var/log/mailward")  # LogsDirectory=mailward
    _, socket_path, _ = parse_milter_socket(load_settings(CONTRIB / "mailward.toml").milter.socket)
    writable = " ".join(service["ReadWritePaths"]).split()
    assert str(Path(socket_path).parent) in writable


def test_tmpfiles_entry_makes_the_default_socket_directory():
    lines = [
        line.split()
        for line in (CONTRIB / "tmpfiles.d" / "mailward.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    _, default_socket, _ = parse_milter_socket(load_settings().milter.socket)
    assert lines[0][:5] == ["d", str(Path(default_socket).parent), "2750", "mailward", "postfix"]
    assert default_socket.startswith("/var/spool/postfix/")  # inside Debian's smtpd chroot


def test_logrotate_file_rotates_the_configured_log(tmp_path):
    text = (CONTRIB / "logrotate" / "mailward").read_text()
    assert text.split("{")[0].split("\n")[-1].strip() == service_config()["logging"]["file"]
    assert "create 0640" in text and "copytruncate" not in text.replace("no copytruncate", "")
    if shutil.which("logrotate"):  # its own dry run; the service user may not exist on this machine
        conf = tmp_path / "mailward"
        conf.write_text(text.replace("create 0640 mailward mailward", "create 0640 root root"))
        result = subprocess.run(
            ["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr


def test_log_file_is_private_and_reopened_after_rotation(tmp_path, monkeypatch):
    """The name is checked at most every RECHECK seconds (not stat'ed per line): a line written
    just after the rename still reaches the renamed file, none is lost, and later ones the new file."""
    monkeypatch.setattr(PrivateLogFile, "RECHECK", 0.2)
    log_file = tmp_path / "logs" / "milter.log"
    rotated = tmp_path / "logs" / "milter.log.1"
    old_umask = os.umask(0o022)
    try:
        configure_logging(LoggingSettings(file=str(log_file)))
        logging.getLogger("test").warning("first")
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
        log_file.rename(rotated)  # what logrotate does
        logging.getLogger("test").warning("second")  # within RECHECK of the last check: the renamed file
        assert "second" in rotated.read_text() and not log_file.exists()
        time.sleep(0.3)
        logging.getLogger("test").warning("third")
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
        assert "third" in log_file.read_text() and "third" not in rotated.read_text()
        log_file.chmod(0o644)  # an older release's file
        configure_logging(LoggingSettings(file=str(log_file)))
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)
        configure_logging(LoggingSettings())


def _notified_milter(tmp_path: Path, workers: int) -> tuple[socket.socket, Path, Path]:
    """A systemd notify socket at ``tmp_path/notify``, and a milter configuration: listener, socket, config."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(180)
    sock, config = tmp_path / "sock" / "milter.sock", tmp_path / "m.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[milter]\nsocket = "unix:{sock}"\nworkers = {workers}\n'
        f'[reputation]\nenabled = false\n[logging]\nfile = "{tmp_path / "milter.log"}"\n'
    )
    return notify, sock, config


def test_ready_waits_for_listen_not_for_the_socket_file(tmp_path):
    """The socket file appears at bind(2), before listen(2); an MTA connecting in between is refused
    and tempfails the mail. With listen held back 1.5 s, READY=1 still comes only once it listens,
    so Postfix ordered after the unit is never refused."""
    notify, sock, config = _notified_milter(tmp_path, workers=0)
    held_back = (
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=listen",
        "-e",
        "inject=listen:delay_enter=1500000",
    )
    proc = subprocess.Popen(
        [*held_back, sys.executable, "-m", "mailward.milter.daemon", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
    )
    try:
        ready = notify.recv(4096).decode().split("\n")
        assert "READY=1" in ready
        assert unix_listening(sock)
        (milter,) = (int(field.removeprefix("MAINPID=")) for field in ready if field.startswith("MAINPID="))
        os.kill(milter, signal.SIGTERM)  # the milter, not strace
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


def test_milter_notifies_systemd_of_ready_reloading_and_stopping(tmp_path):
    listener, sock, config = _notified_milter(tmp_path, workers=1)
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    proc = MilterProcess(config, sock, tmp_path / "milter.log")
    try:
        proc.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        ready = listener.recv(4096).decode().split("\n")
        assert "READY=1" in ready and f"MAINPID={proc.proc.pid}" in ready
        assert unix_listening(sock)  # READY only once it listens
        proc.signal(signal.SIGUSR1)  # what ExecReload sends
        assert listener.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert listener.recv(4096).decode() == "READY=1"
        proc.signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert proc.proc.wait(timeout=60) == 0
    finally:
        proc.stop()
        listener.close()
