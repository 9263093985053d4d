"""Hash deny and allow lists in public IOC formats; allow wins."""

import hashlib

import pytest

from mailward.errors import ArtifactError
from mailward.evidence import Category
from mailward.signatures.hashes import HashList
from support.mail import EICAR
from support.mail import mime_mail as message
from support.unpack import Scanner, settings_for, zipped

PAYLOAD = b"not really malware, but listed" * 10


def digests(data):
    return {a: hashlib.new(a, data).hexdigest() for a in ("md5", "sha1", "sha256")}


@pytest.mark.parametrize(
    "suffix, line",
    [
        (".txt", "{sha256};Trojan.Example"),
        (".txt", "{sha1},Trojan.Example"),
        (".txt", "{md5}  Trojan.Example"),
        (".csv", "{SHA256};Trojan.Example"),
        (".hdb", "{md5}:{size}:Trojan.Example"),
        (".hsb", "{sha256}:*:Trojan.Example:73"),
        (".txt", "sha256:{sha256};Trojan.Example"),
        (".txt", "SHA1:{sha1} Trojan.Example"),
        (".hdb", "{md5}\t:{size}:Trojan.Example"),
    ],
)
def test_formats(tmp_path, unpacker, suffix, line):
    d = digests(PAYLOAD)
    listing = tmp_path / f"deny{suffix}"
    listing.write_text("# a comment\n\n" + line.format(size=len(PAYLOAD), SHA256=d["sha256"].upper(), **d) + "\n")
    scan = Scanner(settings_for(tmp_path, hash_lists=(str(listing),)), unpacker)
    _, evidence = scan(message(attachments=[("files.zip", zipped({"a/payload.bin": PAYLOAD}))]))
    [hit] = [f for f in evidence.findings if f.detector == "hashes"]
    assert hit.category is Category.MALWARE and hit.location == "files.zip > a/payload.bin"
    assert "Trojan.Example" in hit.name


def test_clamav_size_must_match(tmp_path):
    from mailward.message import ContentObject

    listing = tmp_path / "deny.hdb"
    listing.write_text(f"{digests(PAYLOAD)['md5']}:{len(PAYLOAD) + 1}:Wrong.Size\n")
    assert HashList.load([str(listing)]).match(ContentObject("x", PAYLOAD)) is None


def test_a_clamav_line_with_an_impossible_size_is_skipped_not_fatal(tmp_path):
    from mailward.message import ContentObject

    md5 = digests(PAYLOAD)["md5"]
    listing = tmp_path / "deny.hdb"
    listing.write_text(f"{md5}:99999999999999999999:Huge\n{md5}:-1:Negative\n{md5}:{len(PAYLOAD)}:Listed\n")
    hashes = HashList.load([str(listing)])
    assert len(hashes) == 1  # "-1" is no size, and not the wildcard "*" either
    assert hashes.match(ContentObject("x", PAYLOAD)).description == "Listed"


def test_allow_wins_over_deny_and_over_yara(tmp_path, unpacker):
    deny = tmp_path / "deny.txt"
    allow = tmp_path / "allow.txt"
    deny.write_text(f"{digests(EICAR)['sha256']};EICAR listed\n")
    allow.write_text(f"{digests(EICAR)['md5']};our test file\n")
    scan = Scanner(settings_for(tmp_path, hash_lists=(str(deny),), hash_allow_lists=(str(allow),)), unpacker)
    _, evidence = scan(message(attachments=[("eicar.com", EICAR)]))
    assert not [f for f in evidence.findings if f.category is Category.MALWARE]
    listing = Scanner(settings_for(tmp_path, hash_lists=(str(deny),)), unpacker)
    _, unlisted = listing(message(attachments=[("eicar.com", EICAR)]))
    assert {f.detector for f in unlisted.findings if f.category is Category.MALWARE} == {"yara", "hashes"}


def test_allowed_archive_exempts_its_members(tmp_path, unpacker):
    archive = zipped({"eicar.com": EICAR})
    allow = tmp_path / "allow.txt"
    allow.write_text(f"{digests(archive)['sha256']}\n")
    scan = Scanner(settings_for(tmp_path, hash_allow_lists=(str(allow),)), unpacker)
    _, evidence = scan(message(attachments=[("tools.zip", archive)]))
    assert not [f for f in evidence.findings if f.category is Category.MALWARE]


def test_bad_lines_are_skipped_and_a_missing_file_is_an_error(tmp_path):
    listing = tmp_path / "deny.txt"
    listing.write_text("garbage\n" + digests(PAYLOAD)["sha256"] + "\n")
    assert len(HashList.load([str(listing)])) == 1
    with pytest.raises(ArtifactError):
        HashList.load([str(tmp_path / "missing.txt")])


def test_large_list_is_compact_and_fast(tmp_path):
    import time

    listing = tmp_path / "big.txt"
    listing.write_text("".join(f"{hashlib.sha256(str(i).encode()).hexdigest()};Fam{i % 50}\n" for i in range(100_000)))
    hashes = HashList.load([str(listing)])
    from mailward.message import ContentObject

    started = time.perf_counter()
    assert hashes.match(ContentObject("x", b"4242")).description == "Fam42"
    assert hashes.match(ContentObject("y", b"no")) is None
    assert time.perf_counter() - started < 0.05


def test_a_list_others_could_have_written_is_refused(tmp_path):
    import os

    allow = tmp_path / "allow.txt"
    allow.write_text(f"{digests(EICAR)['sha256']};attacker's exemption\n")
    os.chmod(allow, 0o666)
    with pytest.raises(ArtifactError, match="writable by group or others"):
        HashList.load([str(allow)])
    os.chmod(allow, 0o644)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(ArtifactError, match="writable by group or others"):
        HashList.load([str(allow)])


def test_a_byte_order_mark_does_not_cost_the_first_hash(tmp_path):
    from mailward.message import ContentObject

    listing = tmp_path / "deny.txt"
    listing.write_bytes("\ufeff".encode() + f"{digests(PAYLOAD)['sha256']};First\n".encode())
    assert HashList.load([str(listing)]).match(ContentObject("x", PAYLOAD)).description == "First"


@pytest.mark.parametrize(
    "content",
    [
        b"garbage\nmore garbage\n",
        f"{digests(PAYLOAD)['sha256']};Listed\n".encode("utf-16"),  # saved as UTF-16: no line reads as a hash
        f"md5:{digests(PAYLOAD)['sha256']}\n".encode(),  # the prefix names another algorithm
        f'"2024-05-01","{digests(PAYLOAD)["sha256"]}","Emotet"\n'.encode(),  # a feed in another format
    ],
)
def test_a_list_with_lines_but_no_usable_entry_is_refused(tmp_path, content):
    listing = tmp_path / "deny.txt"
    listing.write_bytes(content)
    with pytest.raises(ArtifactError, match="no usable entry"):
        HashList.load([str(listing)])


def test_an_empty_list_or_one_of_comments_only_loads(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# filled in by the nightly job\n\n")
    assert len(HashList.load([str(tmp_path / "empty.txt"), str(tmp_path / "comments.txt")])) == 0
