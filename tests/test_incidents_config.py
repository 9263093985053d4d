"""The [incidents], [alerts] and [metrics] sections: defaults, partial tables, errors that name the key."""

from __future__ import annotations

import pytest

from mailward.config import load_settings
from mailward.errors import ConfigError
from mailward.incidents import open_incidents


def _load(tmp_path, text: str):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n{text}')
    return load_settings(cfg)


def test_a_partial_limits_table_keeps_that_senders_other_defaults(tmp_path):
    settings = _load(tmp_path, "[incidents.account]\nspam = 3\n[incidents.inbound_host]\nmalware = 4\n")
    account, inbound, outbound = (
        settings.incidents.account,
        settings.incidents.inbound_host,
        settings.incidents.outbound_host,
    )
    assert (account.spam, account.malware, account.messages, account.recipients) == (3, 1, 500, 2000)
    assert (inbound.malware, inbound.spam) == (4, 0)
    assert (outbound.spam, outbound.malware) == (50, 5)


@pytest.mark.parametrize(
    "text,key",
    [
        ("[incidents.account]\nspamm = 3\n", "incidents.account.spamm"),
        ('[incidents]\nauth_failures = "ten"\n', "incidents.auth_failures"),
        ('[alerts]\nemail_to = "soc@example.test"\n', "alerts.email_to"),
        ("[incidents]\nflush_interval = 0\n", "incidents.flush_interval"),
        ("[incidents]\nflush_interval = 61\n", "incidents.flush_interval"),
        ("[incidents.inbound_host]\nwindow = 30.0\n", "incidents.inbound_host.window"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.key == key


@pytest.mark.parametrize(
    "text,key",
    [
        ('[incidents]\nexempt_networks = ["10.0.0.0/33"]\n', "incidents.exempt_networks"),
        ('[alerts]\nsyslog = "/dev/log"\nsyslog_facility = "mial"\n', "alerts.syslog_facility"),
        (
            '[alerts]\nwebhook_token_file = "/nonexistent/token"\nwebhook_url = "https://x.example.test/"\n',
            "alerts.webhook_token_file",
        ),
    ],
)
def test_values_checked_when_incident_response_starts(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        open_incidents(_load(tmp_path, text))
    assert err.value.key == key
