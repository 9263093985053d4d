"""The parser sandbox: hard time limit, restart after a kill, crash and memory limits as evidence."""

import io
import time

import pikepdf
import pytest

from mailward.unpack import Allowance, Fact, Kind, Sandbox, Stop
from support.unpack import ole_package


def many_objects_pdf(count: int) -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.Root.Junk = pikepdf.Array([pdf.make_indirect(pikepdf.Dictionary(N=i)) for i in range(count)])
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


ALLOWANCE = Allowance(bytes=10_000_000, members=100)


@pytest.fixture
def sandbox():
    box = Sandbox(timeout=10.0, memory=1024 * 1024 * 1024)
    yield box
    box.close()


def test_timeout_kills_the_child_and_the_next_call_works(sandbox):
    sandbox.run(Kind.PDF, many_objects_pdf(1), "warm.pdf", ALLOWANCE)  # start-up is not charged to a call
    slow = many_objects_pdf(200_000)
    sandbox.timeout = 0.05
    started = time.monotonic()
    result = sandbox.run(Kind.PDF, slow, "slow.pdf", ALLOWANCE)
    assert time.monotonic() - started < 2
    assert [i.stop for i in result.incomplete] == [Stop.TIMEOUT]
    sandbox.timeout = 10.0
    again = sandbox.run(Kind.PDF, many_objects_pdf(1), "ok.pdf", ALLOWANCE)
    assert again.incomplete == ()


def test_a_child_that_dies_is_a_crash_finding_not_a_hang():
    box = Sandbox(timeout=5.0, memory=20 * 1024 * 1024)  # too little to even import the parsers
    try:
        started = time.monotonic()
        result = box.run(Kind.PDF, many_objects_pdf(1), "x.pdf", ALLOWANCE)
        assert [i.stop for i in result.incomplete] == [Stop.CRASH]
        assert time.monotonic() - started < 30
    finally:
        box.close()


def test_garbage_is_corrupt_not_a_crash(sandbox):
    for kind in (Kind.PDF, Kind.SEVENZIP, Kind.RAR, Kind.ISO, Kind.TNEF, Kind.OLE, Kind.RTF):
        result = sandbox.run(kind, b"\x00garbage" * 100, "junk", ALLOWANCE)
        assert result.members == () or all(not m.data for m in result.members), kind
        assert all(i.stop in (Stop.CORRUPT, Stop.UNSUPPORTED) for i in result.incomplete), (kind, result)


def test_short_document_bytes_never_name_a_file_on_disk(sandbox, tmp_path):
    """olefile takes bytes shorter than 1536 as a file name: an attachment must never open a local file."""
    on_disk = tmp_path / "local.doc"
    on_disk.write_bytes(ole_package("local.txt", b"content of a local file"))
    as_content = sandbox.run(Kind.OLE, on_disk.read_bytes(), "local.doc", ALLOWANCE)
    assert [m.data for m in as_content.members] == [b"content of a local file"]  # the package is read
    as_name = sandbox.run(Kind.OLE, str(on_disk).encode(), "short.doc", ALLOWANCE)
    assert b"content of a local file" not in b"".join(m.data for m in as_name.members)
    assert Fact.OLE_OBJECT not in {o.fact for o in as_name.observations} and as_name.incomplete == ()
