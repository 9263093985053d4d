"""One TOML file validated into a frozen :class:`Settings` at start-up.

Every section is a frozen dataclass with real defaults, so Mailward runs with no
file at all. Unknown keys and bad values are errors that name the file and key;
a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import pwd
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .addresses import policy_keys, policy_subject
from .envelope import Direction, DirectionRules
from .errors import ConfigError
from .evidence import Category, Severity
from .verdict import Action

MiB = 1024 * 1024


@dataclass(frozen=True)
class MilterSettings:
    # Inside Postfix's chroot (/var/spool/postfix) so Debian's chrooted smtpd finds it as
    # unix:/mailward/milter.sock; or inet:PORT@127.0.0.1.
    socket: str = "unix:/var/spool/postfix/mailward/milter.sock"
    socket_group: str = "postfix"  # group that may connect (Postfix's smtpd runs as postfix)
    user: str = ""  # drop root privileges to this user after start-up
    workers: int = 2  # scanning processes; 0 scans in the milter process
    spool_threshold: int = 1 * MiB  # bodies above this go to a private temp file
    message_deadline: float = 60.0  # seconds a message may spend in the scanners
    message_cpu: float = 30.0  # CPU seconds one message may use in a worker (RLIMIT_CPU); past it: unchecked
    timeout: int = 600  # libmilter's I/O timeout towards the MTA

    @property
    def cpu_budget(self) -> float:
        """CPU seconds per message: never more than the deadline allows in wall time."""
        return min(self.message_cpu, self.message_deadline)


@dataclass(frozen=True)
class DirectionSettings:
    internal_networks: tuple[str, ...] = ()
    outbound_daemons: tuple[str, ...] = ("ORIGINATING", "submission", "submissions")
    authenticated_is_outbound: bool = True

    def rules(self) -> DirectionRules:
        return DirectionRules.build(self.internal_networks, self.outbound_daemons, self.authenticated_is_outbound)


class ActionTable(Mapping[Category, Action]):
    """A read-only category -> action mapping that pickles (settings travel to the scanning workers)."""

    __slots__ = ("_actions",)

    def __init__(self, actions: Mapping[Category, Action]):
        self._actions = dict(actions)

    def __getitem__(self, category: Category) -> Action:
        return self._actions[category]

    def __iter__(self) -> typing.Iterator[Category]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)

    def __hash__(self) -> int:
        return hash(frozenset(self._actions.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"ActionTable({ {c.value: a.value for c, a in self._actions.items()} })"

    def __getstate__(self) -> dict[Category, Action]:
        return self._actions

    def __setstate__(self, state: dict[Category, Action]) -> None:
        self._actions = state


# The one table of finding categories the policy acts on, with each one's inbound default. Its
# TOML key is ``<category>_action`` in [policy.inbound], [policy.outbound] and the policy tables;
# a new category needs a line here and nothing else in the configuration.
DEFAULT_ACTIONS: Mapping[Category, Action] = ActionTable(
    {
        Category.MALWARE: Action.REJECT,
        Category.SPAM: Action.QUARANTINE,  # spam findings, and a spam score at or above spam_threshold
        Category.PHISHING: Action.QUARANTINE,
        Category.FILETYPE: Action.QUARANTINE,
        Category.MACRO: Action.QUARANTINE,
        Category.UNCHECKED: Action.QUARANTINE,
        Category.REPUTATION: Action.TAG,
        Category.AUTHENTICATION: Action.TAG,
        Category.BLOCKED: Action.REJECT,  # an analyst's block or a suspension
    }
)
ACTION_KEYS: Mapping[str, Category] = MappingProxyType({f"{c.value}_action": c for c in DEFAULT_ACTIONS})


def _default_actions() -> Mapping[Category, Action]:
    return DEFAULT_ACTIONS


@dataclass(frozen=True)
class DirectionPolicy:
    """Thresholds and actions for one direction (or one policy table); ``policy.decide`` reads only this."""

    tag_threshold: float = 0.5  # spam score at which a message is tagged "unsure"
    spam_threshold: float = 0.9  # spam score at which the spam action applies
    # What each finding category at or above min_severity calls for (DEFAULT_ACTIONS; TOML: <category>_action).
    actions: Mapping[Category, Action] = field(default_factory=_default_actions)
    # Findings with an action of their own (policy.NAMED_ACTIONS), whatever their severity:
    macro_action_plain: Action = Action.TAG  # VBA macros that do not run by themselves
    macro_action_autoexec: Action = Action.QUARANTINE  # auto-exec VBA, or XLM macros (Auto_Open)
    macro_action_malicious: Action = Action.REJECT  # auto-exec plus shell/download/CreateObject... or an IOC
    clamav_unavailable_action: Action = Action.QUARANTINE  # clamd down, slow or answering an error
    notify_virus: bool = False  # notice with the incident ID to the admin (outbound: and an address login)
    min_severity: Severity = Severity.MEDIUM  # weaker findings only tag
    on_error: Action = Action.TEMPFAIL  # tempfail or accept when a check fails
    accept_errors_from: tuple[str, ...] = ()  # detectors whose failures accept instead (e.g. "dns")

    def with_actions(self, changes: Mapping[Category, Action]) -> DirectionPolicy:
        """This policy with some categories' actions changed."""
        return dataclasses.replace(self, actions=ActionTable({**self.actions, **changes}))


@dataclass(frozen=True)
class PolicyTable:
    """One ``[[policy.recipient]]`` or ``[[policy.sender]]`` table, Amavis-style.

    ``match`` holds addresses (``ceo@example.org``) and domains (``example.org``,
    which covers its subdomains too); ``policy`` is the direction's policy with
    the table's own keys applied over it, resolved when the file is loaded.
    """

    match: tuple[str, ...]
    policy: DirectionPolicy


@dataclass(frozen=True)
class PolicySettings:
    inbound: DirectionPolicy = DirectionPolicy()
    # Our own users send workbooks with macros every day: outbound, only malicious macros are stopped.
    outbound: DirectionPolicy = DirectionPolicy(
        macro_action_autoexec=Action.TAG, macro_action_malicious=Action.QUARANTINE
    ).with_actions({Category.REPUTATION: Action.ACCEPT, Category.AUTHENTICATION: Action.ACCEPT})
    recipient: tuple[PolicyTable, ...] = ()  # inbound mail, by recipient address or domain
    sender: tuple[PolicyTable, ...] = ()  # outbound mail, by envelope sender address or domain

    def for_direction(self, direction: Direction) -> DirectionPolicy:
        return self.outbound if direction is Direction.OUTBOUND else self.inbound

    def for_recipient(self, direction: Direction, mail_from: str, recipient: str) -> DirectionPolicy:
        """The policy for one recipient of a message: the most specific table that matches, else the direction's.

        Inbound mail is looked up by recipient, outbound mail by envelope sender.
        """
        tables, subject = (self.sender, mail_from) if direction is Direction.OUTBOUND else (self.recipient, recipient)
        for key in policy_keys(subject) if tables else ():
            for table in tables:
                if key in table.match:
                    return table.policy
        return self.for_direction(direction)


@dataclass(frozen=True)
class QuarantineSettings:
    backend: str = "sqlite"  # sqlite | postgresql
    directory: str = ""  # default: <state_dir>/quarantine
    dsn: str = ""  # PostgreSQL connection string
    hold: bool = False  # also put quarantined mail in Postfix's hold queue
    # Seconds a quarantine write (and any quarantine or incident database statement) may take; a
    # message whose write does not finish in time is tempfailed and not kept. message_deadline plus
    # this is when the reply is due (incident response gets what is left); keep it at least 2 s below
    # Postfix's milter_content_timeout, or Postfix gives up first.
    write_timeout: float = 10.0
    retention_days: int = 30  # `mailward quarantine purge` removes older records (0 = keep)
    # Seconds within which a sender's retry of a stored message (same bytes but our Received header,
    # same envelope) is answered with the stored copy instead of a second one; default 5 days, Postfix's
    # maximal_queue_lifetime (a sender retries for at most that long).
    retry_window: float = 5 * 86400.0
    relay_host: str = "127.0.0.1"  # SMTP relay that released mail is handed to
    relay_port: int = 25
    relay_timeout: float = 60.0  # seconds for one SMTP conversation with the relay
    release_key_file: str = ""  # HMAC key for X-Mailward-Release; default <state_dir>/release.key
    release_max_age_days: int = 14  # how long a release mark stays valid (relay queues can be slow)
    digest_sender: str = ""  # envelope and From: of digest mails; default postmaster@<hostname>
    digest_recipients: tuple[str, ...] = ()  # security contacts who get a digest of everything


@dataclass(frozen=True)
class SignatureSettings:
    rules_dirs: tuple[str, ...] = ()  # extra YARA source directories, besides the shipped rules
    shipped_rules: bool = True
    yara_timeout: int = 5  # whole seconds per object (libyara's granularity)
    hash_lists: tuple[str, ...] = ()  # deny lists: "hash;description" lines, ClamAV .hdb/.hsb
    hash_allow_lists: tuple[str, ...] = ()  # same formats; an allowed object gets no signature findings
    banned_extensions: tuple[str, ...] = (
        "ade",
        "adp",
        "app",
        "appx",
        "appxbundle",
        "bas",
        "bat",
        "cab",
        "chm",
        "cmd",
        "com",
        "cpl",
        "dll",
        "exe",
        "gadget",
        "hta",
        "inf",
        "ins",
        "isp",
        "jar",
        "js",
        "jse",
        "lib",
        "lnk",
        "mde",
        "msc",
        "msi",
        "msix",
        "msp",
        "mst",
        "nsh",
        "pif",
        "ps1",
        "ps1xml",
        "ps2",
        "psc1",
        "psm1",
        "reg",
        "scf",
        "scr",
        "sct",
        "settingcontent-ms",
        "shb",
        "shs",
        "sys",
        "url",
        "vb",
        "vbe",
        "vbs",
        "vxd",
        "website",
        "wsc",
        "wsf",
        "wsh",
        "xll",
        "xbap",
        "iqy",
        "slk",
        "library-ms",
        "appref-ms",
        "search-ms",
    )
    risky_extensions: tuple[str, ...] = ("iso", "img", "vhd", "vhdx", "one", "onepkg")  # containers malware hides in


@dataclass(frozen=True)
class ClamavSettings:
    """A clamd the admin already runs (Debian clamav-daemon); off while ``socket`` is empty."""

    socket: str = ""  # "unix:/run/clamav/clamd.ctl" or "inet:3310@127.0.0.1"
    scan: str = "objects"  # objects: every decoded object; message: the raw message once
    timeout: float = 10.0  # seconds one clamd call may take (connect, stream, answer)
    stream_max_length: int = 25 * MiB  # clamd.conf StreamMaxLength: larger objects are unchecked
    max_file_size: int = 25 * MiB  # clamd.conf MaxFileSize: clamd skips larger files unreported; unchecked
    connections: int = 4  # clamd calls in flight per scanning process
    retry_after: float = 5.0  # once clamd is down (refused, or 3 messages unanswered): unavailable, not called


@dataclass(frozen=True)
class LimitSettings:
    """Inspection limits (docs: scanning.md); hitting one is evidence, never silence."""

    max_message_size: int = 50 * MiB
    max_parts: int = 1000
    max_depth: int = 10
    max_objects: int = 1000
    min_unpack_budget: int = 10 * MiB
    max_unpack_budget: int = 256 * MiB
    unpack_budget_factor: int = 100
    max_ratio: int = 200
    ratio_floor: int = 1 * MiB
    parser_timeout: float = 10.0  # seconds per document in the parser sandbox (olefile, PDF, 7z, ISO...)
    parser_memory: int = 1024 * MiB  # address-space limit of the parser sandbox
    inspect_deadline: float = 25.0  # seconds for unpacking, and again for YARA; what is left is unchecked
    password_candidates: int = 8  # words from the message text tried on encrypted archives
    password_trials: int = 64  # wrong passwords tried per message (each ~1 ms for AES), 4 per candidate per archive
    password_time: float = 2.0  # seconds those may take (a 7z, RAR or Office file prices each); 0: none tried

    def unpack_budget(self, message_size: int) -> int:
        return max(self.min_unpack_budget, min(self.max_unpack_budget, self.unpack_budget_factor * message_size))


@dataclass(frozen=True)
class ModelSettings:
    directory: str = ""  # default: <state_dir>/models
    shipped_model: bool = True  # fall back to the model shipped in the package
    check_interval: float = 5.0  # seconds between checks for a newly promoted model


@dataclass(frozen=True)
class LearningSettings:
    """Offline training: the label ledger, and when a candidate model may replace the live one."""

    ledger: str = ""  # SQLite label ledger; default <state_dir>/ledger.sqlite
    evaluation_set: str = ""  # labelled set (any SET form) promotions are checked on
    max_auc_drop: float = 0.002  # promotion refuses a candidate whose ROC AUC is lower by more...
    max_fp_rate_rise: float = 0.001  # ...or whose ham false-positive rate is higher by more, unless forced
    autolearn_ham_below: float = 0.01  # `train --autolearn`: unlabelled mail below this score is learned as ham...
    autolearn_spam_above: float = 0.99  # ...and at or above this as spam
    autolearn_per_sender: int = 10  # at most this many per From: domain and run (against poisoning)
    autolearn_max_ratio: float = 3.0  # no class may grow beyond this multiple of the other in the ledger


@dataclass(frozen=True)
class HeaderSettings:
    """Marks on mail tagged as spam or phishing that existing Sieve and client rules key on.

    ``X-Spam-Flag: YES`` is SpamAssassin's and rspamd's convention, so it is on by
    default (a sender's own X-Spam-Flag is then removed); rewriting the Subject is
    visible to every reader, so it is off unless a tag is configured.
    """

    spam_flag: bool = True  # add X-Spam-Flag: YES to tagged spam and phishing
    subject_tag: str = ""  # e.g. "[SPAM] ", put before the Subject of tagged spam; "" = unchanged


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    file: str = ""  # JSON lines; empty = standard error


@dataclass(frozen=True)
class ReputationSettings:
    """DNS blocklists and sender authentication (SPF, DKIM, DMARC) of inbound mail.

    Blocklist entries use Postfix's postscreen syntax ``zone[=a.b.c.d][*severity]``
    (octets as ``n``, ``[n..m]`` or ``[n;m]``) or ``zone&mask[*severity]`` for bitmask
    lists, e.g. ``"zen.spamhaus.org=127.0.0.[2..3]*high"``. Answers that match no entry
    of their zone (such as 127.255.255.x, "query refused") are errors, never listings.
    """

    enabled: bool = True
    nameservers: tuple[str, ...] = ("127.0.0.1",)  # a local caching resolver; () = /etc/resolv.conf
    port: int = 53
    budget: float = 4.0  # seconds all lookups for one message may take together
    query_timeout: float = 2.0  # seconds one query may take (all nameservers together)
    retry_after: float = 10.0  # after a message found DNS dead, skip lookups this long
    cache_size: int = 50_000  # answers cached per scanning process (positive and negative)
    threads: int = 32  # lookups in flight per scanning process
    dnsbl: tuple[str, ...] = ()  # zones listing client addresses (IPv4 and IPv6)
    uribl: tuple[str, ...] = ()  # zones listing domains found in message URLs
    uribl_skip_domains: tuple[str, ...] = ()  # URL domains never looked up (e.g. our own)
    max_uri_domains: int = 20  # distinct URL domains looked up per message
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    authserv_id: str = ""  # Authentication-Results id; empty: this host's name
    # Clients never checked: loopback, private and link-local, like rspamd's local_addrs.
    allow_networks: tuple[str, ...] = (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
    allow_domains: tuple[str, ...] = ()  # clients whose MTA-verified host name is in these domains
    min_key_bits: int = 1024  # shorter DKIM keys never pass
    max_signatures: int = 5  # DKIM signatures verified per message
    # Severity of each outcome; the policy maps severities to actions.
    spf_fail: Severity = Severity.LOW
    spf_softfail: Severity = Severity.INFO
    dkim_fail: Severity = Severity.LOW
    dmarc_reject: Severity = Severity.HIGH
    dmarc_quarantine: Severity = Severity.MEDIUM
    dmarc_none: Severity = Severity.INFO
    dns_unavailable: Severity = Severity.LOW


@dataclass(frozen=True)
class CounterLimits:
    """Sliding-window limits for one kind of sender; 0 switches a limit off.

    ``spam`` counts verdicts at or above the direction's spam threshold,
    ``malware`` messages with a malware finding the policy acts on.
    """

    window: float = 3600.0  # seconds the counters look back
    messages: int = 0
    recipients: int = 0
    spam: int = 0
    malware: int = 0


@dataclass(frozen=True)
class AccountLimits(CounterLimits):
    """Per authenticated account, outbound: a compromised mailbox sends bursts."""

    messages: int = 500
    recipients: int = 2000
    spam: int = 10
    malware: int = 1


@dataclass(frozen=True)
class OutboundHostLimits(CounterLimits):
    """Per client address of unauthenticated outbound mail (internal hosts, relays of many users)."""

    spam: int = 50
    malware: int = 5


@dataclass(frozen=True)
class InboundHostLimits(CounterLimits):
    """Per client address of inbound mail; off by default (a big provider's relay sends spam too)."""


@dataclass(frozen=True)
class IncidentSettings:
    """Suspensions, blocks and failed-login blocking (docs/incidents.md)."""

    enabled: bool = True  # counters, suspensions and failed-login blocks; analyst blocks always apply
    account: AccountLimits = AccountLimits()
    outbound_host: OutboundHostLimits = OutboundHostLimits()
    inbound_host: InboundHostLimits = InboundHostLimits()
    suspend_for: float = 0.0  # seconds a suspension lasts; 0 = until an analyst lifts it
    auth_log: str = "/var/log/mail.log"  # Postfix's log, followed for failed SASL logins
    follow_auth_log: bool = False  # the milter follows auth_log itself (else run `mailward watch-auth`)
    auth_failures: int = 10  # failed logins from one address within auth_window block it
    auth_window: float = 600.0
    auth_block_for: float = 86400.0  # seconds such a block lasts; 0 = until lifted
    exempt_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # never blocked automatically
    refresh: float = 5.0  # seconds a host trusts its copy of the block list (other hosts' blocks)
    flush_interval: float = 2.0  # seconds between writes of this host's counters to the store (and reads of all hosts')


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts for the security team go; no channel configured = log only."""

    webhook_url: str = ""  # JSON POST
    webhook_token_file: str = ""  # optional bearer token, read at start-up
    webhook_timeout: float = 5.0
    email_to: tuple[str, ...] = ()  # the security contact(s)
    email_from: str = ""  # default: mailward@<hostname>
    notice_to: tuple[str, ...] = ()  # admin address(es) for virus notices (policy.*.notify_virus); default email_to
    smtp_host: str = ""  # default: quarantine.relay_host / relay_port
    smtp_port: int = 0
    syslog: str = ""  # "/dev/log", another unix socket path, or "udp:HOST:PORT"
    syslog_facility: str = "auth"
    dedup_window: float = 3600.0  # an alert with the same key is sent once per window
    rate_limit: int = 30  # at most this many alerts per rate_period; the rest are counted
    rate_period: float = 600.0


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "127.0.0.1:9464" serves Prometheus metrics; empty = off


@dataclass(frozen=True)
class WebSettings:
    """`mailward web`: the quarantine page for analysts and, through digest links, recipients."""

    listen: str = "127.0.0.1:8025"  # HOST:PORT; put a TLS proxy in front for anything but loopback
    base_url: str = ""  # e.g. https://quarantine.example.org; digests link here when set
    session_idle: float = 300.0  # seconds without a request before an analyst must log in again
    lockout_after: int = 10  # failed logins in a row that lock an account (`web user unlock`)
    secure_cookies: bool = False  # mark the session cookie Secure (set it when served over HTTPS)
    link_days: int = 7  # how long a recipient's digest link stays valid


@dataclass(frozen=True)
class Settings:
    state_dir: str = "/var/lib/mailward"
    milter: MilterSettings = MilterSettings()
    direction: DirectionSettings = DirectionSettings()
    policy: PolicySettings = PolicySettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    signatures: SignatureSettings = SignatureSettings()
    clamav: ClamavSettings = ClamavSettings()
    limits: LimitSettings = LimitSettings()
    model: ModelSettings = ModelSettings()
    learning: LearningSettings = LearningSettings()
    logging: LoggingSettings = LoggingSettings()
    reputation: ReputationSettings = ReputationSettings()
    incidents: IncidentSettings = IncidentSettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()
    headers: HeaderSettings = HeaderSettings()
    web: WebSettings = WebSettings()
    source: str = field(default="<defaults>", compare=False)

    def state_path(self, configured: str, default_name: str) -> Path:
        return Path(configured) if configured else Path(self.state_dir) / default_name

    @property
    def quarantine_dir(self) -> Path:
        return self.state_path(self.quarantine.directory, "quarantine")

    @property
    def model_dir(self) -> Path:
        return self.state_path(self.model.directory, "models")

    @property
    def rules_cache_dir(self) -> Path:
        return Path(self.state_dir) / "rules"


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read and validate a TOML file (or only the defaults when ``path`` is None)."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            where = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
            raise ConfigError(source, "", f"not UTF-8 text ({where})") from None
        except RecursionError:
            raise ConfigError(source, "", "not valid TOML: nested too deeply") from None
    if overrides:
        data = _deep_merge(data, overrides)
    settings: Settings = _build(Settings, data, source, "")
    _check(settings, source)
    _check_values(settings, source)
    return dataclasses.replace(settings, source=source)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(cls: Any, table: object, source: str, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(source, prefix, "must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in table:
        if key not in known:
            raise ConfigError(source, _join(prefix, key), f"unknown key (known: {', '.join(sorted(known))})")
    if cls is PolicySettings:
        return _build_policy(table, source, prefix)
    return cls(
        **{name: _coerce(hints[name], table[name], source, _join(prefix, name)) for name in known if name in table}
    )


def _build_policy(table: dict[str, Any], source: str, prefix: str) -> PolicySettings:
    """Each direction starts from its own defaults; each policy table from its direction's result."""
    base = PolicySettings()
    inbound = _build_direction(base.inbound, table.get("inbound", {}), source, _join(prefix, "inbound"))
    outbound = _build_direction(base.outbound, table.get("outbound", {}), source, _join(prefix, "outbound"))
    tables = {
        name: _build_tables(over, table.get(name, []), source, _join(prefix, name))
        for name, over in (("recipient", inbound), ("sender", outbound))
    }
    return PolicySettings(inbound, outbound, **tables)


def _build_direction(
    default: DirectionPolicy, table: object, source: str, prefix: str, extra: tuple[str, ...] = ()
) -> DirectionPolicy:
    """``default`` with the keys of ``table`` applied; ``<category>_action`` keys go into ``actions``."""
    if not isinstance(table, dict):
        raise ConfigError(source, prefix, "must be a table")
    fields = {f.name for f in dataclasses.fields(DirectionPolicy)} - {"actions"}
    for key in table:
        if key not in fields and key not in ACTION_KEYS and key not in extra:
            known = sorted([*fields, *ACTION_KEYS, *extra])
            raise ConfigError(source, _join(prefix, key), f"unknown key (known: {', '.join(known)})")
    hints = typing.get_type_hints(DirectionPolicy)
    actions = {
        ACTION_KEYS[k]: _coerce(Action, v, source, _join(prefix, k)) for k, v in table.items() if k in ACTION_KEYS
    }
    given = {k: _coerce(hints[k], v, source, _join(prefix, k)) for k, v in table.items() if k in fields}
    return dataclasses.replace(default, **given).with_actions(actions)


def _build_tables(base: DirectionPolicy, tables: object, source: str, prefix: str) -> tuple[PolicyTable, ...]:
    """``[[policy.recipient]]`` / ``[[policy.sender]]``: each a ``match`` plus direction-policy keys."""
    if not isinstance(tables, list):
        raise ConfigError(source, prefix, "must be an array of tables ([[...]])")
    built: list[PolicyTable] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        key = f"{prefix}[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(source, key, "must be a table")
        match = table.get("match")
        if isinstance(match, str):
            match = [match]
        if not isinstance(match, list) or not match or not all(isinstance(m, str) for m in match):
            raise ConfigError(source, f"{key}.match", "must be an address or domain, or a list of them")
        names = []
        for item in match:
            try:
                name = policy_subject(item)
            except ValueError as exc:
                raise ConfigError(source, f"{key}.match", str(exc)) from None
            if name in seen:
                raise ConfigError(source, f"{key}.match", f"{name!r} is already matched by {prefix}[{seen[name]}]")
            seen[name] = index
            names.append(name)
        policy = _build_direction(base, {k: v for k, v in table.items() if k != "match"}, source, key)
        built.append(PolicyTable(tuple(names), policy))
    return tuple(built)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            if issubclass(hint, enum.IntEnum) and isinstance(value, str):
                return hint[value.upper()]
            return hint(value)
        except (ValueError, KeyError):
            names = [m.name.lower() if issubclass(hint, enum.IntEnum) else m.value for m in hint]
            raise ConfigError(source, key, f"{value!r} is not one of {', '.join(map(str, names))}") from None
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(source, key, "must be a list of strings")
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, "must be a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, "must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, "must be a string")
        return value
    raise ConfigError(source, key, f"unsupported setting type {hint!r}")


def _directions(policy: PolicySettings) -> typing.Iterator[tuple[str, DirectionPolicy]]:
    yield "policy.inbound", policy.inbound
    yield "policy.outbound", policy.outbound
    for name in ("recipient", "sender"):
        for index, table in enumerate(getattr(policy, name)):
            yield f"policy.{name}[{index}]", table.policy


HOUR, DAY = 3600.0, 86400.0
# Seconds: (key, whether 0 is allowed, the most that makes sense). TOML takes inf, nan and negative
# numbers, which would reach sockets, timers and rlimits as errors (or waits) only at use.
_DURATIONS: tuple[tuple[str, bool, float], ...] = (
    ("milter.message_deadline", False, HOUR),
    ("milter.message_cpu", False, HOUR),
    ("quarantine.write_timeout", False, HOUR),
    ("quarantine.relay_timeout", False, HOUR),
    ("clamav.timeout", False, HOUR),
    ("clamav.retry_after", True, DAY),
    ("limits.parser_timeout", False, HOUR),
    ("limits.inspect_deadline", False, HOUR),
    ("limits.password_time", True, HOUR),
    ("model.check_interval", True, DAY),
    ("reputation.budget", False, HOUR),
    ("reputation.query_timeout", False, HOUR),
    ("reputation.retry_after", True, DAY),
    ("incidents.account.window", False, 7 * DAY),
    ("incidents.outbound_host.window", False, 7 * DAY),
    ("incidents.inbound_host.window", False, 7 * DAY),
    ("incidents.suspend_for", True, 365 * DAY),
    ("incidents.auth_window", False, 7 * DAY),
    ("incidents.auth_block_for", True, 365 * DAY),
    ("incidents.refresh", True, HOUR),
    ("incidents.flush_interval", False, 60.0),
    ("alerts.webhook_timeout", False, HOUR),
    ("alerts.dedup_window", True, 7 * DAY),
    ("alerts.rate_period", False, DAY),
    ("web.session_idle", False, DAY),
)


def _check_durations(settings: Settings, source: str) -> None:
    """Every timeout, interval and window is a finite number of seconds in its range (never inf or nan)."""
    for key, zero_ok, most in _DURATIONS:
        value: Any = settings
        for part in key.split("."):
            value = getattr(value, part)
        if not (0.0 <= value <= most if zero_ok else 0.0 < value <= most):
            low = "from 0 to" if zero_ok else "more than 0 and at most"
            raise ConfigError(source, key, f"must be {low} {most:g} seconds")


def _check(settings: Settings, source: str) -> None:
    """Cross-field rules that a type alone cannot express."""
    _check_durations(settings, source)  # first: no inf or nan reaches the rules below
    for key, pol in _directions(settings.policy):
        for attr in ("tag_threshold", "spam_threshold"):
            if not 0.0 <= getattr(pol, attr) <= 1.0:
                raise ConfigError(source, f"{key}.{attr}", "must be between 0 and 1")
        if pol.tag_threshold > pol.spam_threshold:
            raise ConfigError(source, f"{key}.tag_threshold", "must not exceed spam_threshold")
        if pol.on_error not in (Action.TEMPFAIL, Action.ACCEPT):
            raise ConfigError(source, f"{key}.on_error", "must be tempfail or accept")
    if settings.quarantine.backend not in ("sqlite", "postgresql"):
        raise ConfigError(source, "quarantine.backend", "must be sqlite or postgresql")
    if settings.quarantine.backend == "postgresql" and not settings.quarantine.dsn:
        raise ConfigError(source, "quarantine.dsn", "is required for the postgresql backend")
    write_timeout = settings.quarantine.write_timeout
    if settings.milter.message_deadline + write_timeout >= settings.milter.timeout:
        raise ConfigError(
            source,
            "quarantine.write_timeout",
            f"must leave milter.message_deadline ({settings.milter.message_deadline:g} s) plus "
            f"this below milter.timeout ({settings.milter.timeout} s): the reply must reach "
            "the MTA before it gives up",
        )
    if settings.milter.workers < 0:
        raise ConfigError(source, "milter.workers", "must be 0 or more")
    _check_clamav(settings.clamav, source)
    if settings.milter.message_cpu < 1:
        raise ConfigError(source, "milter.message_cpu", "must be at least 1 second")
    if not 1 <= settings.web.lockout_after <= 1000:
        raise ConfigError(source, "web.lockout_after", "must be between 1 and 1000")
    if not 1 <= settings.web.link_days <= 90:
        raise ConfigError(source, "web.link_days", "must be between 1 and 90 days")
    for key in ("account", "outbound_host", "inbound_host"):
        if getattr(settings.incidents, key).window < 60.0:
            raise ConfigError(
                source, f"incidents.{key}.window", "must be at least 60 seconds (counted in 10 s buckets)"
            )
    if settings.incidents.auth_window < 60.0:
        raise ConfigError(source, "incidents.auth_window", "must be at least 60 seconds (counted in 10 s buckets)")
    if settings.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(source, "logging.level", "must be debug, info, warning or error")


def clamd_address(socket: str) -> str | tuple[str, int]:
    """``unix:PATH`` -> PATH, ``inet:PORT@HOST`` -> (HOST, PORT), as socket.connect takes them."""
    kind, _, rest = socket.partition(":")
    if kind in ("unix", "local") and rest.startswith("/"):
        return rest
    if kind == "inet":
        port, at, host = rest.partition("@")
        if at and host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    raise ValueError(f"{socket!r} is not unix:/PATH or inet:PORT@HOST")


def _check_clamav(clamav: ClamavSettings, source: str) -> None:
    if clamav.socket:
        try:
            clamd_address(clamav.socket)
        except ValueError as exc:
            raise ConfigError(source, "clamav.socket", str(exc)) from None
    if clamav.scan not in ("objects", "message"):
        raise ConfigError(source, "clamav.scan", "must be objects or message")
    if clamav.stream_max_length < 1:
        raise ConfigError(source, "clamav.stream_max_length", "must be positive")
    if clamav.max_file_size < 1:
        raise ConfigError(source, "clamav.max_file_size", "must be positive")
    if not 1 <= clamav.connections <= 64:
        raise ConfigError(source, "clamav.connections", "must be between 1 and 64")


# --- values that name something: addresses, URLs, networks, paths, sockets, accounts -------------
# Checked here, where the file is loaded, so `mailward-milter --check` and every start see them;
# the modules that use them get values known to be well-formed.


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " /[]"):
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def parse_milter_socket(value: str) -> tuple[str, str, int]:
    """libmilter's connection spec: ("unix", path, 0) or ("inet"/"inet6", host, port)."""
    kind, sep, rest = value.partition(":")
    if kind in ("unix", "local") and sep:
        if not rest.startswith("/"):
            raise ValueError("a unix socket needs an absolute path, e.g. unix:/var/spool/postfix/mailward/milter.sock")
        return "unix", rest, 0
    if kind in ("inet", "inet6") and sep:
        port, at, host = rest.partition("@")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be {kind}:PORT@HOST with a port from 1 to 65535")
        return kind, host if at else "", int(port)
    raise ValueError("must be unix:/PATH, inet:PORT@HOST or inet6:PORT@HOST")


def _check_url(value: str, schemes: tuple[str, ...]) -> None:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL with a host")
    _ = parsed.port  # raises ValueError for a bad port


def _check_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network") from None


def _check_path(value: str) -> None:
    if "\0" in value or not value.strip():
        raise ValueError("must be a file system path")


def _check_syslog(value: str) -> None:
    if value.startswith("udp:"):
        parse_host_port(value[4:])
    elif not value.startswith("/"):
        raise ValueError('must be an absolute unix socket path ("/dev/log") or udp:HOST:PORT')


def _check_user(value: str) -> None:
    try:
        pwd.getpwnam(value)
    except KeyError:
        raise ValueError(f"no such user {value!r}") from None


def _check_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


SUBJECT_TAG_MAX = 64


def _check_subject_tag(value: str) -> None:
    """One short line of printable ASCII: it goes into a header as is, unencoded."""
    if len(value) > SUBJECT_TAG_MAX or not all(" " <= c <= "~" for c in value):
        raise ValueError(f"must be at most {SUBJECT_TAG_MAX} printable ASCII characters (no line breaks)")


def _check_retry_window(value: float) -> None:
    if not 0.0 <= value <= 60 * 86400.0:
        raise ValueError("must be from 0 (no deduplication) to 60 days in seconds")


def _check_port(value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError("must be a port from 1 to 65535")


_LIST = object()  # marks a key whose every list element is checked
_VALUE_CHECKS: tuple[tuple[str, Callable[[Any], object], object], ...] = (
    # (key, check, when): ``when`` None = always, else only for a non-empty value
    ("state_dir", _check_path, None),
    ("milter.socket", parse_milter_socket, None),
    ("milter.user", _check_user, "set"),
    ("direction.internal_networks", _check_network, _LIST),
    ("quarantine.directory", _check_path, "set"),
    ("quarantine.relay_port", _check_port, None),
    ("quarantine.retry_window", _check_retry_window, None),
    ("quarantine.release_key_file", _check_path, "set"),
    ("signatures.rules_dirs", _check_path, _LIST),
    ("signatures.hash_lists", _check_path, _LIST),
    ("signatures.hash_allow_lists", _check_path, _LIST),
    ("model.directory", _check_path, "set"),
    ("learning.ledger", _check_path, "set"),
    ("logging.file", _check_path, "set"),
    ("reputation.nameservers", _check_ip, _LIST),
    ("reputation.port", _check_port, None),
    ("reputation.allow_networks", _check_network, _LIST),
    ("incidents.exempt_networks", _check_network, _LIST),
    ("incidents.auth_log", _check_path, None),
    ("alerts.webhook_url", lambda v: _check_url(v, ("http", "https")), "set"),
    ("alerts.webhook_token_file", _check_path, "set"),
    ("alerts.syslog", _check_syslog, "set"),
    ("metrics.listen", parse_host_port, "set"),
    ("headers.subject_tag", _check_subject_tag, "set"),
    ("web.listen", parse_host_port, None),
    ("web.base_url", lambda v: _check_url(v, ("http", "https")), "set"),
)


def _check_values(settings: Settings, source: str) -> None:
    """Every value that names an address, URL, network, path, socket or account is well-formed."""
    for key, check, when in _VALUE_CHECKS:
        value: Any = settings
        for part in key.split("."):
            value = getattr(value, part)
        if when == "set" and not value:
            continue
        for item in value if when is _LIST else (value,):
            try:
                check(item)
            except ValueError as exc:
                raise ConfigError(source, key, str(exc)) from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
