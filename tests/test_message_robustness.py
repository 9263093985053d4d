"""Parsing never fails a message: broken headers and charsets fall back, every detector still runs.

Regression cases from issue 12 (a Subject in the charset ``utf\\xc3\\xa98``, text
parts in ``charset=undefined``/``idna`` with 8-bit bytes, which raised out of the
parser and skipped every detector), a detector that raises, ``mailward scan``
going on past a bad file, terminal-safe output, and property tests of the decode
functions and of every reader of message text (tokenizer, HTML text, DKIM and
DMARC header readers, URL domains, quarantine summary).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailward.config import LimitSettings, load_settings
from mailward.envelope import Envelope
from mailward.evidence import Category, Severity
from mailward.message import ContentObject, decode_header, decode_header_value, decode_text, parse_message
from mailward.mimeparse import FIELD_LIMIT
from mailward.models.htmltext import html_to_text
from mailward.models.tokens import tokenize
from mailward.policy import decide
from mailward.quarantine.render import inspect_message
from mailward.quarantine.store import header_summary
from mailward.reputation.dkim_check import signatures
from mailward.reputation.dmarc_check import author_domains
from mailward.reputation.names import OrgDomains, url_domains
from mailward.runtime import build_inspector
from mailward.textsafe import json_line, neutralise
from mailward.unpack import Unpacker
from mailward.verdict import Action
from support.mail import EICAR
from support.unpack import zipped

BAD_SUBJECT = b"Subject: =?utf\xc3\xa98?Q?hello?=\n"


def raw_message(
    text_charset: bytes = b"utf-8",
    body: bytes = b"Hello\n",
    subject: bytes = b"Subject: hi\n",
    attachment: tuple[str, bytes] | None = ("invoice.com", EICAR),
) -> bytes:
    """A message built by hand, because EmailMessage refuses the broken parts these tests need."""
    head = b"From: a@example.org\nTo: b@example.com\n" + subject + b"MIME-Version: 1.0\n"
    text = b"Content-Type: text/plain; charset=" + text_charset + b"\nContent-Transfer-Encoding: 8bit\n\n" + body
    if attachment is None:
        return head + text
    name, data = attachment
    return (
        head + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n' + text + b"\n--b\n"
        b'Content-Type: application/octet-stream; name="' + name.encode() + b'"\n'
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data) + b"--b--\n"
    )


@pytest.fixture(scope="module")
def orgs():
    return OrgDomains()


@pytest.fixture(scope="module")
def inspector(tmp_path_factory):
    settings = load_settings(
        overrides={"state_dir": str(tmp_path_factory.mktemp("state")), "reputation": {"enabled": False}}
    )
    return settings, build_inspector(settings)


def parse_errors(findings) -> list:
    return [f for f in findings if f.name == "parse-error"]


# -- the observed cases -------------------------------------------------------------------------------------------


def test_subject_in_a_broken_charset_is_decoded_and_recorded(unpacker):
    parsed = parse_message(raw_message(subject=BAD_SUBJECT, attachment=None), LimitSettings(), unpacker)
    assert "hello" in parsed.subject
    [problem] = parse_errors(parsed.problems)
    assert problem.category is Category.UNCHECKED and problem.severity is Severity.INFO
    assert problem.location == "header Subject"


@pytest.mark.parametrize("charset", [b"undefined", b"idna", b"punycode", b"unicode_escape", b"x-no-such"])
def test_text_in_a_hostile_charset_still_lets_eicar_be_found(inspector, charset):
    settings, inspect = inspector
    raw = raw_message(text_charset=charset, body=b"caf\xe9 \xff\xfe na\xefve\n", subject=BAD_SUBJECT)
    evidence = inspect.inspect(raw, Envelope())
    malware = evidence.of(Category.MALWARE)
    assert malware and malware[0].location == "invoice.com"
    assert {f.location for f in parse_errors(evidence.findings)} == {"header Subject", "part 1"}
    assert evidence.spam is not None  # the spam model read the text too
    for on_error in (Action.TEMPFAIL, Action.ACCEPT):
        policy = replace(settings.policy.inbound, on_error=on_error)
        assert decide(evidence, policy, "MW-T").action is Action.REJECT


def test_text_of_a_hostile_charset_falls_back_without_raising():
    for charset in ("idna", "undefined", "punycode", "hex", "rot13", "utf\udcc3\udca98", "\0", "x" * 300):
        obj = ContentObject("part 1", b"caf\xe9 \xff", "text/plain", charset=charset)
        assert obj.text() in ("café ÿ", "caf\ufffd \ufffd")
    assert decode_text(b"caf\xc3\xa9", "iso-8859-1") == ("cafÃ©", True)
    assert decode_text(b"caf\xe9", "us-ascii") == ("caf\xe9", False)  # lying charset: Latin-1, recorded
    assert decode_text(b"caf\xe9", "") == ("caf\xe9", True)  # undeclared 8-bit: old mail, fine


def test_file_name_in_an_rfc2231_charset_that_raises_keeps_name_and_content(inspector):
    _, inspect = inspector
    raw = (
        raw_message(attachment=("x.txt", EICAR))
        .replace(b'filename="x.txt"', b"filename*=idna''evil%E9.exe")
        .replace(b'name="x.txt"', b"name*=undefined''a%FF.scr")
    )
    evidence = inspect.inspect(raw, Envelope())
    assert evidence.of(Category.MALWARE)
    banned = {f.detail for f in evidence.findings if f.name == "banned-extension"}
    assert any(".exe" in d for d in banned)  # the name still counts
    assert evidence.of(Category.MALWARE)[0].location == "evil\xe9.exe"  # Latin-1, the last fallback
    assert {f.detail for f in parse_errors(evidence.findings)} >= {"file name charset 'idna' does not decode it"}


def test_damaged_base64_is_recorded_and_what_decodes_is_scanned(inspector):
    _, inspect = inspector
    raw = raw_message()
    start = raw.index(b"base64\n\n") + len(b"base64\n\n")
    raw = raw[:start] + b"!!*" + raw[start : start + 8] + b"%%" + raw[start + 8 :]
    evidence = inspect.inspect(raw, Envelope())
    assert evidence.of(Category.MALWARE)
    details = [f.detail for f in parse_errors(evidence.findings) if f.location == "invoice.com"]
    assert "damaged base64" in " ".join(details)


class BuggySniffer(Unpacker):
    """A real unpacker with a bug that one object's bytes trigger."""

    def sniff(self, data, declared_text=""):
        if b"TRIGGER" in data:
            raise IndexError("bug")
        return super().sniff(data, declared_text)


def test_a_bug_while_expanding_keeps_every_mime_leaf():
    raw = raw_message(body=b"TRIGGER\n")
    with BuggySniffer(LimitSettings()) as buggy:
        parsed = parse_message(raw, LimitSettings(), buggy)
    assert [o.path for o in parsed.objects] == ["part 1", "invoice.com"]
    assert parsed.objects[1].data == EICAR
    [problem] = [p for p in parsed.problems if p.severity is Severity.MEDIUM]
    assert problem.name == "parse-error" and "IndexError" in problem.detail


@dataclass(frozen=True)
class BrokenDetector:
    """A detector with a bug that this message's bytes trigger."""

    name: str = "broken"

    def inspect(self, message, envelope):
        raise UnicodeError(f"cannot decode {message.subject}")


def test_a_detector_that_raises_is_its_own_unchecked_finding(inspector):
    settings, inspect = inspector
    inspect = replace(inspect, detectors=(BrokenDetector(), *inspect.detectors))
    evidence = inspect.inspect(raw_message(), Envelope())
    [error] = [f for f in evidence.findings if f.name == "detector-error"]
    assert (error.category, error.detector, error.severity) == (Category.UNCHECKED, "broken", Severity.HIGH)
    assert evidence.of(Category.MALWARE) and evidence.spam is not None  # the others still ran
    clean = inspect.inspect(raw_message(attachment=None), Envelope())
    policy = settings.policy.inbound
    assert decide(clean, policy, "MW-T").action is Action.QUARANTINE  # not tempfailed on every retry
    assert decide(clean, replace(policy, accept_errors_from=("broken",)), "MW-T").action is Action.ACCEPT


# -- mailward scan ----------------------------------------------------------------------------------------------


def run_scan(tmp_path, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "mailward.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[reputation]\nenabled = false\n')
    return subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--config", str(config), "scan", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_scan_dir_scans_every_file_and_reports_each_failure(tmp_path):
    mail = tmp_path / "mail"
    mail.mkdir()
    (mail / "1-subject.eml").write_bytes(raw_message(subject=BAD_SUBJECT))
    (mail / "2-undefined.eml").write_bytes(raw_message(text_charset=b"undefined", body=b"\xe9\xff\n"))
    (mail / "3-idna.eml").write_bytes(raw_message(text_charset=b"idna", body=b"\xe9\xff\n"))
    done = run_scan(tmp_path, str(tmp_path / "missing.eml"), str(mail))
    assert done.returncode == 1  # the missing file failed
    assert "missing.eml" in done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0].rsplit("/", 1)[1] for line in lines] == [
        "1-subject.eml",
        "2-undefined.eml",
        "3-idna.eml",
    ]
    assert all(": reject " in line for line in lines)


def test_scan_output_escapes_terminal_controls_and_bidi(tmp_path):
    member = "\x1b]0;pwned\x07\x1b[2Jinvoice\u202etxt.com"
    eml = tmp_path / "m.eml"
    eml.write_bytes(raw_message(attachment=("a.zip", zipped({member: EICAR}))))
    text = run_scan(tmp_path, str(eml))
    assert text.returncode == 0, text.stderr
    assert "\\x1b[2Jinvoice\\u202etxt.com" in text.stdout
    as_json = run_scan(tmp_path, "--json", str(eml))
    assert as_json.returncode == 0, as_json.stderr
    for output in (text.stdout, as_json.stdout):
        assert not any(ch in output for ch in "\x1b\x07\u202e\r")
    doc = json.loads(as_json.stdout)
    assert f"a.zip > {member}" in {f["location"] for f in doc["findings"]}  # the JSON decodes to the real name


def test_json_line_escapes_what_neutralise_escapes_and_round_trips():
    doc = {"name": "a\u202eb\x1b\u2028c\udce9 Grüße 😀 \U000e0001"}
    line = json_line(doc)
    assert json.loads(line) == doc
    assert "Grüße 😀" in line
    assert not any(ch in line for ch in "\u202e\x1b\u2028\udce9\U000e0001")
    assert neutralise(doc["name"]) == "a\\u202eb\\x1b\\u2028c\\udce9 Grüße 😀 \\U000e0001"


# -- properties of the decode functions ------------------------------------------------------------------------

CHARSETS = st.sampled_from(
    [
        "",
        "utf-8",
        "us-ascii",
        "iso-8859-1",
        "idna",
        "undefined",
        "punycode",
        "utf-7",
        "utf-16",
        "unicode_escape",
        "hex",
        "base64",
        "rot13",
        "cp1252",
        "gb18030",
        "iso-2022-jp",
        "x-unknown",
        "utf\udcc3\udca98",
    ]
) | st.text(max_size=20)
WORDS = st.builds(
    lambda cs, enc, body: f"=?{cs}?{enc}?{body}?=",
    CHARSETS,
    st.sampled_from(["Q", "B", "q", "b", "X"]),
    st.text(max_size=30),
)
HEADER_VALUES = st.lists(WORDS | st.text(max_size=30), max_size=5).map(" ".join)


@hsettings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(data=st.binary(max_size=200), charset=CHARSETS)
def test_decode_text_never_raises_and_keeps_clean_decodes(data, charset):
    text, clean = decode_text(data, charset)
    assert isinstance(text, str)
    if charset in ("utf-8", "iso-8859-1") and clean:
        assert text == data.decode(charset)
    if not charset:
        assert clean


@hsettings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(value=HEADER_VALUES)
def test_decode_header_never_raises(value):
    text, clean = decode_header(value)
    assert isinstance(text, str) and decode_header_value(value) == text
    if "=?" not in value:
        assert clean


@hsettings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [b"Subject", b"From", b"Content-Type", b"Content-Disposition", b"Content-Transfer-Encoding", b"X-Any"]
            ),
            st.binary(max_size=60) | HEADER_VALUES.map(lambda v: v.encode("utf-8", "surrogateescape")),
        ),
        max_size=6,
    ),
    body=st.binary(max_size=300),
)
def test_parse_message_never_raises(unpacker, headers, body):
    raw = b"".join(name + b": " + value.replace(b"\n", b" ") + b"\n" for name, value in headers) + b"\n" + body
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert parsed.objects
    for obj in parsed.objects:
        assert isinstance(obj.text(), str)


MARKUP = st.lists(
    st.sampled_from(
        [
            "<a href='",
            '<a href="data:a/b;base64,',
            "'>",
            '">',
            "</a>",
            "<img src=",
            "<",
            ">",
            "&#",
            "&#x",
            "&amp;",
            ";",
            "9" * 12,
            "<!--",
            "-->",
            "<style>",
            "</style>",
            "\u202e",
            "\x00",
            "=?",
            "http://",
            "@",
            ".",
        ]
    )
    | st.text(max_size=10),
    max_size=30,
)


@hsettings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    head=st.binary(max_size=200) | HEADER_VALUES.map(lambda v: b"From: " + v.encode("utf-8", "surrogateescape")),
    markup=MARKUP.map("".join),
)
def test_every_reader_of_message_text_falls_back(unpacker, orgs, head, markup):
    """The tokenizer, HTML text, reputation's header readers and the quarantine summary on hostile text."""
    raw = (
        head.replace(b"\n", b" ")
        + b"\nContent-Type: text/html; charset=idna\n\n"
        + markup.encode("utf-8", "surrogateescape")
    )
    parsed = parse_message(raw, LimitSettings(), unpacker)
    assert isinstance(html_to_text(markup).text, str)
    assert tokenize(parsed)
    assert all(isinstance(s, str) for s in header_summary(raw))
    signatures(parsed.raw_headers)
    author_domains(parsed.raw_headers)
    list(url_domains(parsed, orgs))


def test_a_header_block_that_starts_folded_has_no_dkim_signatures():
    """dkimpy raised IndexError on it, which failed the whole reputation detector (found by the test above)."""
    assert signatures(b"\tfolded first line\r\nDKIM-Signature: v=1; d=example.org; s=sel") == []


_HEAD = "From: a@example.org\r\nTo: b@example.net\r\nMIME-Version: 1.0\r\n"
_QUADRATIC_FIELDS = {  # each took the stdlib minutes (to parse, or to decode for a scan or an analyst's view)
    "encoded words": _HEAD + "Subject: " + " ".join(["=?utf-8?q?a?="] * 200_000) + "\r\n\r\nbody\r\n",
    "RFC 2231 continuations": _HEAD
    + "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
    + "; ".join(f'filename*{i}="a"' for i in range(200_000))
    + "\r\n\r\nAAAA\r\n",
    "a field of semicolons": _HEAD + "Content-Type: multipart/mixed; boundary=b" + ";" * 3_000_000 + "\r\n\r\n--b\r\n",
}


@pytest.mark.parametrize("raw", _QUADRATIC_FIELDS.values(), ids=_QUADRATIC_FIELDS.keys())
def test_a_huge_header_field_is_cut_before_the_stdlib_parses_it(raw):
    """Bounded by the field cut, all three take well under a second; before it, minutes each."""
    started = time.process_time()
    parsed = parse_message(raw.encode(), LimitSettings())
    inspect_message(raw.encode())
    assert time.process_time() - started < 10
    assert all(len(value) <= FIELD_LIMIT for _, value in parsed.headers)
    assert len(parsed.objects) >= 1
