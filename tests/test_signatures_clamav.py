"""ClamAV beside YARA, against a real clamd on a private socket and database."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from clamd_server import EICAR, EICAR_SIGNATURE, MARKER, MARKER_SIGNATURE, start_clamd
from mailward.config import ClamavSettings, LimitSettings, MiB, Settings, load_settings
from mailward.envelope import Envelope
from mailward.errors import ConfigError
from mailward.evidence import Category
from mailward.message import parse_message
from mailward.pipeline import Inspector
from mailward.policy import decide
from mailward.runtime import build_inspector
from mailward.signatures import detectors
from mailward.signatures.clamav import ClamavDetector, Clamd, ClamdError
from mailward.signatures.hashes import HashList
from mailward.verdict import Action
from support.mail import mime_mail as message
from support.unpack import ooxml, zipped


def clamav_settings(clamd_socket: str, **over) -> ClamavSettings:
    return replace(ClamavSettings(socket=clamd_socket, timeout=5.0), **over)


def detector_for(settings: ClamavSettings, deadline: float = 20.0) -> ClamavDetector:
    return ClamavDetector(settings, HashList.load(()), deadline)


def scan(detector, raw: bytes, unpacker):
    return detector.inspect(parse_message(raw, LimitSettings(), unpacker), Envelope())


def test_protocol_ping_version_and_instream(clamd):
    client = Clamd.from_socket(clamd.socket, 5.0)
    assert client.ping()
    assert client.version().startswith("ClamAV ")
    assert client.instream(EICAR) == EICAR_SIGNATURE
    assert client.instream(b"an ordinary letter " * 10_000) is None  # several INSTREAM chunks
    assert client.instream(b"") is None


def test_eicar_in_zip_is_malware_named_after_the_signature(clamd, unpacker):
    raw = message(attachments=[("invoice.zip", zipped({"eicar.com": EICAR}))])
    evidence = scan(detector_for(clamav_settings(clamd.socket)), raw, unpacker)
    hits = [f for f in evidence.findings if f.category is Category.MALWARE]
    assert {f.name for f in hits} == {f"clamav:{EICAR_SIGNATURE}"}
    assert "invoice.zip > eicar.com" in {f.location for f in hits}
    assert not [f for f in evidence.findings if f.category is Category.UNCHECKED]


def test_own_marker_inside_an_office_member_with_object_evidence(clamd, tmp_path):
    docx = ooxml("docx", {"word/media/blob.bin": b"\x00\x01" + MARKER + b"\x02"})
    settings = replace(Settings(), state_dir=str(tmp_path), clamav=clamav_settings(clamd.socket))
    inspector = build_inspector(settings)
    try:
        evidence = inspector.inspect(
            message(attachments=[("report.docx", docx)], subject="Quarterly report"), Envelope()
        )
    finally:
        inspector.unpacker.close()
    hits = {f.location: f for f in evidence.findings if f.name == f"clamav:{MARKER_SIGNATURE}"}
    # clamd opens the package itself too: the container and the member are both named.
    assert set(hits) == {"report.docx", "report.docx > word/media/blob.bin"}
    hit = hits["report.docx > word/media/blob.bin"]
    assert hit.detector == "clamav"
    import hashlib

    assert hit.sha256 == hashlib.sha256(b"\x00\x01" + MARKER + b"\x02").hexdigest()
    assert hit.file_name == "word/media/blob.bin" and hit.mime_type
    assert evidence.message.subject == "Quarterly report"
    assert decide(evidence, settings.policy.inbound, "MW-1").action is Action.REJECT


def test_clean_message_has_no_clamav_findings(clamd, unpacker):
    raw = message(attachments=[("notes.txt", b"Meeting at ten.\n"), ("a.zip", zipped({"b.txt": b"hello"}))])
    assert scan(detector_for(clamav_settings(clamd.socket)), raw, unpacker).findings == ()


def test_whole_message_mode_streams_the_raw_message_once(clamd, unpacker):
    raw = message(attachments=[("eicar.com", EICAR)])
    evidence = scan(detector_for(clamav_settings(clamd.socket, scan="message")), raw, unpacker)
    assert [(f.name, f.location) for f in evidence.findings] == [(f"clamav:{EICAR_SIGNATURE}", "message")]


def test_object_above_stream_max_length_is_unchecked_not_clean(clamd, unpacker):
    raw = message(attachments=[("big.bin", b"\x01" * 5000)])
    evidence = scan(detector_for(clamav_settings(clamd.socket, stream_max_length=4096)), raw, unpacker)
    [unchecked] = [f for f in evidence.findings if f.category is Category.UNCHECKED]
    assert unchecked.name == "clamav-too-large" and unchecked.location == "big.bin"


def test_clamd_refusing_a_long_stream_is_too_large_not_an_outage(clamd, unpacker):
    # The test clamd has StreamMaxLength 1M; configured larger, clamd itself refuses the stream.
    detector = detector_for(clamav_settings(clamd.socket, stream_max_length=4 * 1024 * 1024))
    evidence = scan(detector, message(attachments=[("big.bin", b"\x01" * (2 * 1024 * 1024))]), unpacker)
    assert [f.name for f in evidence.findings] == ["clamav-too-large"]
    assert scan(detector, message(attachments=[("eicar.com", EICAR)]), unpacker).of(Category.MALWARE)


def _beyond_max_file_size() -> bytes:
    """A zip whose one member (1.5 MiB that do not compress) ends in the clamd marker."""
    import os

    return message(attachments=[("report.zip", zipped({"report.dat": os.urandom(1536 * 1024) + MARKER}))])


@pytest.mark.parametrize("mode", ["objects", "message"])
def test_object_above_clamd_max_file_size_is_unchecked_not_clean(tmp_path, unpacker, mode):
    # clamd skips a file above MaxFileSize, inside a stream too, and answers OK: not a verdict.
    server = start_clamd(tmp_path / "clamd", "4M", extra=("MaxFileSize 1M", "MaxScanSize 100M"))
    try:
        settings = clamav_settings(server.socket, scan=mode, stream_max_length=4 * MiB, max_file_size=MiB)
        evidence = scan(detector_for(settings), _beyond_max_file_size(), unpacker)
    finally:
        server.stop()
    too_large = {f.location for f in evidence.findings if f.name == "clamav-too-large"}
    assert "report.zip > report.dat" in too_large
    assert all(f.category is Category.UNCHECKED for f in evidence.findings)
    assert decide(evidence, Settings().policy.inbound, "MW-1").action is Action.QUARANTINE


def test_limit_clamd_reports_is_unchecked_not_malware(tmp_path, unpacker):
    # With AlertExceedsMax clamd answers Heuristics.Limits.Exceeded.MaxFileSize FOUND: it did not look.
    server = start_clamd(tmp_path / "clamd", "4M", extra=("MaxFileSize 1M", "AlertExceedsMax yes"))
    try:
        settings = clamav_settings(server.socket, stream_max_length=4 * MiB)
        evidence = scan(detector_for(settings), _beyond_max_file_size(), unpacker)
    finally:
        server.stop()
    assert not evidence.of(Category.MALWARE)
    limits = [f for f in evidence.findings if f.name == "clamav-limit"]
    assert "report.zip > report.dat" in {f.location for f in limits}
    assert all(f.category is Category.UNCHECKED and "MaxFileSize" in f.detail for f in limits)
    assert decide(evidence, Settings().policy.inbound, "MW-1").action is Action.QUARANTINE


def test_clamd_down_is_unavailable_and_quarantines_inbound(tmp_path, unpacker):
    settings = clamav_settings(f"unix:{tmp_path / 'nobody.sock'}", retry_after=60.0)
    detector = detector_for(settings)
    evidence = scan(detector, message(attachments=[("eicar.com", EICAR)]), unpacker)
    [unavailable] = evidence.findings
    assert unavailable.category is Category.UNCHECKED and unavailable.name == "clamav-unavailable"
    assert "connecting to clamd" in unavailable.detail
    policy = Settings().policy
    assert decide(evidence, policy.inbound, "MW-1").action is Action.QUARANTINE
    tempfail = replace(policy.inbound, clamav_unavailable_action=Action.TEMPFAIL)
    assert decide(evidence, tempfail, "MW-1").action is Action.TEMPFAIL
    # Within retry_after the next message is not sent to clamd at all, and still never clean.
    again = scan(detector, message(attachments=[("a.txt", b"hello")]), unpacker)
    assert [f.name for f in again.findings] == ["clamav-unavailable"] and "not retried" in again.findings[0].detail


def test_clamd_that_stops_answering_is_unavailable_within_the_call_timeout(tmp_path, unpacker):
    server = start_clamd(tmp_path / "hung")
    try:
        server.pause()
        detector = detector_for(clamav_settings(server.socket, timeout=0.5, retry_after=0.0))
        started = time.monotonic()
        evidence = scan(detector, message(attachments=[("eicar.com", EICAR), ("b.bin", b"\x02" * 100)]), unpacker)
        elapsed = time.monotonic() - started
        assert [f.name for f in evidence.findings] == ["clamav-unavailable"]
        assert "timed out" in evidence.findings[0].detail
        assert elapsed < 3.0  # calls run in parallel, each within its own timeout
        server.resume()
        recovered = scan(detector, message(attachments=[("eicar.com", EICAR)]), unpacker)
        assert [f.name for f in recovered.findings] == [f"clamav:{EICAR_SIGNATURE}"]
    finally:
        server.stop()


def test_message_deadline_bounds_the_whole_clamav_stage(tmp_path, unpacker):
    server = start_clamd(tmp_path / "slow")
    try:
        server.pause()
        detector = detector_for(clamav_settings(server.socket, timeout=30.0, connections=1), deadline=0.5)
        started = time.monotonic()
        evidence = scan(detector, message(attachments=[(f"{i}.bin", bytes([i]) * 50) for i in range(4)]), unpacker)
        assert time.monotonic() - started < 5.0
        assert [f.name for f in evidence.findings] == ["clamav-unavailable"]
        assert "deadline" in evidence.findings[0].detail
    finally:
        server.stop()


class _SlowOnSome:
    """A clamd that answers OK at once, except on streams holding ``slow``, which it never answers
    (as clamd's engine may spend longer than the call timeout on one crafted file)."""

    def __init__(self, path, slow: bytes):
        import socket
        import threading

        self.slow, self.calls, self.release = slow, 0, threading.Event()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.socket = f"unix:{path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.calls += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            got = b""
            while not got.endswith(b"\0\0\0\0"):  # the zero-length chunk that ends INSTREAM
                piece = conn.recv(65536)
                if not piece:
                    return
                got += piece
            if self.slow in got:
                self.release.wait(30)
                return
            conn.sendall(b"stream: OK\0")

    def close(self):
        self.release.set()
        self.server.close()


def test_one_slow_object_is_unchecked_in_its_own_message_only(tmp_path, unpacker):
    fake = _SlowOnSome(tmp_path / "c.sock", b"SLOWME")
    try:
        detector = detector_for(clamav_settings(fake.socket, timeout=0.3, retry_after=60.0))
        attack = scan(detector, message(attachments=[("x.bin", b"SLOWME" * 10)]), unpacker)
        assert [(f.name, f.location) for f in attack.findings] == [("clamav-unavailable", "x.bin")]
        for i in range(4):  # everyone else's mail is still scanned, by clamd
            calls = fake.calls
            assert scan(detector, message(attachments=[("letter.txt", b"hello %d" % i)]), unpacker).findings == ()
            assert fake.calls > calls
    finally:
        fake.close()


def test_clamd_that_answers_no_message_in_a_row_is_left_alone(tmp_path, unpacker):
    fake = _SlowOnSome(tmp_path / "c.sock", b"")  # hung: accepts connections, answers nothing
    try:
        detector = detector_for(clamav_settings(fake.socket, timeout=0.2, retry_after=60.0))
        for i in range(3):
            assert [f.name for f in scan(detector, message(body=f"m{i}\n"), unpacker).findings] == [
                "clamav-unavailable"
            ]
        calls = fake.calls
        [down] = scan(detector, message(body="m4\n"), unpacker).findings
        assert down.name == "clamav-unavailable" and "not retried" in down.detail and fake.calls == calls
    finally:
        fake.close()


def test_detector_is_wired_only_when_a_socket_is_set(clamd, tmp_path):
    plain = replace(Settings(), state_dir=str(tmp_path))
    assert "clamav" not in {d.name for d in detectors(plain)}
    wired = replace(plain, clamav=clamav_settings(clamd.socket))
    assert "clamav" in {d.name for d in detectors(wired)}


@pytest.mark.parametrize(
    "table, key",
    [
        ({"socket": "tcp://127.0.0.1:3310"}, "clamav.socket"),
        ({"socket": "inet:99999@127.0.0.1"}, "clamav.socket"),
        ({"socket": "unix:relative.sock"}, "clamav.socket"),
        ({"scan": "attachments"}, "clamav.scan"),
        ({"timeout": 0}, "clamav.timeout"),
        ({"retry_after": -1}, "clamav.retry_after"),
        ({"connections": 0}, "clamav.connections"),
        ({"stream_max_length": 0}, "clamav.stream_max_length"),
        ({"max_file_size": 0}, "clamav.max_file_size"),
        ({"sockett": "unix:/x"}, "clamav.sockett"),
    ],
)
def test_bad_clamav_configuration_names_the_key(tmp_path, table, key):
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"clamav": table})
    assert key in str(err.value)


def test_clamav_configuration_accepts_unix_and_inet():
    assert load_settings(None, {"clamav": {"socket": "unix:/run/clamav/clamd.ctl"}}).clamav.socket
    settings = load_settings(None, {"clamav": {"socket": "inet:3310@127.0.0.1", "scan": "message"}})
    assert Clamd.from_socket(settings.clamav.socket, 1.0).address == ("127.0.0.1", 3310)


def test_inet_clamd_that_refuses_is_unavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClamdError):
        Clamd.from_socket(f"inet:{port}@127.0.0.1", 1.0).ping()


class _BusyDetector:
    """Stands for the detectors that run in the scanning process while clamd works."""

    name = "busy"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def inspect(self, message, envelope):
        from mailward.evidence import Evidence

        time.sleep(self.seconds)
        return Evidence()


def test_clamd_works_while_the_other_detectors_run(tmp_path, unpacker):
    server = start_clamd(tmp_path / "hung")
    try:
        server.pause()  # each clamd call now takes its full timeout
        clamav = detector_for(clamav_settings(server.socket, timeout=1.5, retry_after=0.0))
        inspector = Inspector(LimitSettings(), (clamav, _BusyDetector(1.5)), unpacker)
        started = time.monotonic()
        evidence = inspector.inspect(message(attachments=[("a.bin", b"\x01" * 100)]), Envelope())
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert [f.name for f in evidence.findings] == ["clamav-unavailable"]
    assert elapsed < 2.7, f"{elapsed:.2f}s: clamd and the other detectors ran one after the other"
    assert [stage for stage, _ in evidence.timings] == ["parse", "busy", "clamav"]
