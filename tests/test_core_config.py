from pathlib import Path

import pytest

from mailward.cli.main import main as cli
from mailward.config import load_settings
from mailward.envelope import Direction
from mailward.errors import ConfigError
from mailward.evidence import Category, Severity
from mailward.verdict import Action


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailward.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    s = load_settings()
    assert s.policy.inbound.actions[Category.MALWARE] is Action.REJECT
    assert s.quarantine.backend == "sqlite"
    assert s.milter.socket.startswith("unix:")


def test_per_direction_sections_keep_their_own_defaults(tmp_path):
    s = load_settings(write(tmp_path, "[policy.outbound]\nspam_threshold = 0.7\n"))
    assert s.policy.outbound.spam_threshold == 0.7
    assert s.policy.outbound.actions[Category.REPUTATION] is Action.ACCEPT  # outbound default kept
    assert s.policy.inbound.spam_threshold == 0.9


def test_enums_and_lists_are_typed(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            '[policy.inbound]\nmin_severity = "high"\nspam_action = "reject"\n'
            '[direction]\ninternal_networks = ["10.0.0.0/8", "2001:db8::/32"]\n',
        )
    )
    assert s.policy.inbound.min_severity is Severity.HIGH
    assert s.policy.inbound.actions[Category.SPAM] is Action.REJECT
    assert s.direction.internal_networks == ("10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize(
    "text,key",
    [
        ('[milter]\nworkers = "two"\n', "milter.workers"),
        ("[milter]\nwrokers = 2\n", "milter.wrokers"),
        ('[policy.inbound]\nspam_action = "explode"\n', "policy.inbound.spam_action"),
        ("[policy.inbound]\nspam_threshold = 1.5\n", "policy.inbound.spam_threshold"),
        ('[policy.outbound]\non_error = "reject"\n', "policy.outbound.on_error"),
        ('[direction]\ninternal_networks = ["not-a-net"]\n', "direction.internal_networks"),
        ('[quarantine]\nbackend = "postgresql"\n', "quarantine.dsn"),
        ("milter = 3\n", "milter"),
        ("[[policy.recipient]]\nspam_threshold = 0.5\n", "policy.recipient[0].match"),
        ('[[policy.recipient]]\nmatch = "not an address"\n', "policy.recipient[0].match"),
        (
            '[[policy.recipient]]\nmatch = "a.org"\n[[policy.recipient]]\nmatch = ["A.org"]\n',
            "policy.recipient[1].match",
        ),
        ('[[policy.recipient]]\nmatch = "a.org"\nspam_treshold = 0.5\n', "policy.recipient[0].spam_treshold"),
        ('[[policy.recipient]]\nmatch = "a.org"\ntag_threshold = 0.95\n', "policy.recipient[0].tag_threshold"),
        ('[[policy.sender]]\nmatch = "a.org"\nmalware_action = "deliver"\n', "policy.sender[0].malware_action"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key
    assert str(path) in str(err.value)


def test_spam_marks_default_to_the_flag_without_a_subject_tag(tmp_path):
    assert load_settings().headers.spam_flag is True and load_settings().headers.subject_tag == ""
    s = load_settings(write(tmp_path, '[headers]\nspam_flag = false\nsubject_tag = "[SPAM] "\n'))
    assert (s.headers.spam_flag, s.headers.subject_tag) == (False, "[SPAM] ")


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[milter\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n[milter]\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_settings(latin1)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(write(tmp_path, "a = " + "[" * 100_000 + "]" * 100_000 + "\n"))


@pytest.mark.parametrize(
    "text,key",
    [
        ('[metrics]\nlisten = "garbage"\n', "metrics.listen"),
        ('[metrics]\nlisten = "9464"\n', "metrics.listen"),
        ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen"),
        ('[alerts]\nwebhook_url = "ftp://x"\n', "alerts.webhook_url"),
        ('[alerts]\nwebhook_url = "https://"\n', "alerts.webhook_url"),
        ('[alerts]\nsyslog = "udp:nohost"\n', "alerts.syslog"),
        ('[incidents]\nexempt_networks = ["not-a-network"]\n', "incidents.exempt_networks"),
        ('[reputation]\nallow_networks = ["10.0.0.0/33"]\n', "reputation.allow_networks"),
        ('[reputation]\nnameservers = ["dns.example"]\n', "reputation.nameservers"),
        ('[milter]\nsocket = "unix:relative/milter.sock"\n', "milter.socket"),
        ('[milter]\nsocket = "inet:notaport@127.0.0.1"\n', "milter.socket"),
        ('[milter]\nsocket = "/run/milter.sock"\n', "milter.socket"),
        ('[milter]\nuser = "no-such-user-mailward"\n', "milter.user"),
        ("[quarantine]\nrelay_port = 0\n", "quarantine.relay_port"),
        ('state_dir = ""\n', "state_dir"),
        ('[headers]\nsubject_tag = "[SPAM]\\r\\nBcc: x@example.org "\n', "headers.subject_tag"),
        ('[headers]\nsubject_tag = "\\u00a7SPAM "\n', "headers.subject_tag"),
        ('[headers]\nsubject_tag = "' + "x" * 65 + '"\n', "headers.subject_tag"),
        ('[headers]\nspam_flag = "yes"\n', "headers.spam_flag"),
    ],
)
def test_values_naming_things_are_checked_where_loaded(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert err.value.key == key


SECONDS = [  # a timeout, interval or window, and whether 0 means something (off, no wait, until lifted)
    ("milter.message_deadline", False),
    ("milter.message_cpu", False),
    ("quarantine.write_timeout", False),
    ("quarantine.relay_timeout", False),
    ("clamav.timeout", False),
    ("clamav.retry_after", True),
    ("limits.parser_timeout", False),
    ("limits.inspect_deadline", False),
    ("limits.password_time", True),
    ("model.check_interval", True),
    ("reputation.budget", False),
    ("reputation.query_timeout", False),
    ("reputation.retry_after", True),
    ("incidents.account.window", False),
    ("incidents.auth_window", False),
    ("incidents.suspend_for", True),
    ("incidents.auth_block_for", True),
    ("incidents.refresh", True),
    ("incidents.flush_interval", False),
    ("alerts.webhook_timeout", False),
    ("alerts.dedup_window", True),
    ("alerts.rate_period", False),
    ("web.session_idle", False),
]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "0", "1e9"])
def test_every_timeout_and_interval_is_a_finite_number_of_seconds_in_range(tmp_path, value):
    for key, zero_ok in SECONDS:
        section, name = key.rsplit(".", 1)
        path = write(tmp_path, f"[{section}]\n{name} = {value}\n")
        if value == "0" and zero_ok:
            load_settings(path)
            continue
        with pytest.raises(ConfigError) as err:
            load_settings(path)
        assert err.value.key == key


def test_a_relay_timeout_out_of_range_is_one_line_naming_the_key(tmp_path, capsys):
    """Accepted before, it crashed `quarantine release` with a traceback (OverflowError, ValueError)."""
    path = write(tmp_path, f'state_dir = "{tmp_path}"\n[quarantine]\nrelay_timeout = inf\n')
    assert cli(["--config", str(path), "config", "show"]) == 2
    err = capsys.readouterr().err
    problem = "quarantine.relay_timeout: must be more than 0 and at most 3600 seconds"
    assert err == f"mailward: configuration error: {path}: {problem}\n"
    assert load_settings(write(tmp_path, "[quarantine]\nrelay_timeout = 3600\n")).quarantine.relay_timeout == 3600


def test_well_formed_values_load(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            '[metrics]\nlisten = "[::1]:9464"\n[alerts]\nwebhook_url = "https://h.example/x"\n'
            'syslog = "udp:127.0.0.1:514"\n[milter]\nsocket = "inet:8891@127.0.0.1"\n'
            'user = "root"\n',
        )
    )
    assert s.metrics.listen == "[::1]:9464" and s.milter.user == "root"


def test_the_default_socket_is_inside_postfixs_chroot():
    """Debian's smtpd runs chrooted in /var/spool/postfix and names it unix:/mailward/milter.sock."""
    assert load_settings().milter.socket == "unix:/var/spool/postfix/mailward/milter.sock"


def test_policy_tables_override_their_direction_most_specific_first(tmp_path):
    s = load_settings(
        write(
            tmp_path,
            "[policy.inbound]\nspam_threshold = 0.8\n"
            '[[policy.recipient]]\nmatch = "example.org"\nspam_action = "tag"\n'
            '[[policy.recipient]]\nmatch = ["CEO@example.org"]\nspam_threshold = 0.6\n'
            '[[policy.sender]]\nmatch = "example.org"\nmalware_action = "quarantine"\n',
        )
    )
    pol = s.policy
    ceo = pol.for_recipient(Direction.INBOUND, "x@spam.test", "ceo@example.org")
    staff = pol.for_recipient(Direction.INBOUND, "x@spam.test", "bob@sales.example.org")
    other = pol.for_recipient(Direction.INBOUND, "x@spam.test", "bob@example.com")
    assert (ceo.spam_threshold, ceo.actions[Category.SPAM]) == (0.6, Action.QUARANTINE)  # only its own keys
    assert (staff.spam_threshold, staff.actions[Category.SPAM]) == (0.8, Action.TAG)  # a subdomain matches
    assert other == pol.inbound
    assert (
        pol.for_recipient(Direction.OUTBOUND, "me@example.org", "x@else.test").actions[Category.MALWARE]
        is Action.QUARANTINE
    )
    assert (
        pol.for_recipient(Direction.OUTBOUND, "me@example.org", "x@else.test").actions[Category.REPUTATION]
        is Action.ACCEPT
    )  # built over the outbound defaults
    assert pol.for_recipient(Direction.INBOUND, "me@example.org", "x@else.test") == pol.inbound


def test_the_policy_example_in_contrib_loads_as_documented():
    s = load_settings(Path(__file__).parent.parent / "contrib" / "mailward.example.toml")
    ceo = s.policy.for_recipient(Direction.INBOUND, "x@else.test", "CEO@example.org")
    assert (ceo.spam_threshold, ceo.actions[Category.SPAM], ceo.actions[Category.PHISHING]) == (
        0.7,
        Action.QUARANTINE,
        Action.REJECT,
    )
    assert (
        s.policy.for_recipient(Direction.INBOUND, "x@else.test", "bob@example.org").actions[Category.SPAM] is Action.TAG
    )
