"""Turn a parsed message into the tokens the spam model counts.

Body words are lower-cased and split at every non-letter, so raw mail and the
pre-tokenised Enron-Spam text ("don ' t", "http : / / www . x . com") give the
same tokens. Everything that is not a plain body word carries a prefix naming
where it came from (``subject:``, ``from:dom:``, ``url:dom:``, ``html:trick:``…),
so a word in the subject and the same word in the body are different evidence.

Which headers are read depends on the feature *profile*, recorded in the
model's sidecar so a model is always scored the way it was trained:

* ``corpus`` reads an allow-list. Headers that leak corpus labels or carry an
  earlier filter's verdict (``X-Spam-*``, ``X-Keywords``, ``Status``…) and
  headers that describe the delivery path of one mailbox (``Received``, ``To``,
  ``Delivered-To``) are ignored: right for a model shipped to sites whose mail
  it never saw.
* ``site`` is for a model trained on the site's own mail, where the delivery
  path is the best evidence there is: it adds every header's words under the
  header's name, structured ``Received`` tokens (relay IP and /24, HELO and
  reverse-DNS names and whether they agree, hop count, TLS) and recipient
  tokens (count, domains, undisclosed). Verdicts of any filter, mailbox
  bookkeeping and headers added only after the milter has scored the message
  (``Return-Path``, ``Delivered-To``) are never read: see :data:`SITE_IGNORED`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from ..message import ContentObject, ParsedMessage
from .htmltext import html_to_text

TOKENIZER_VERSION = 1  # bump whenever the tokens for the same message change

_WORD = re.compile(r"[^\W_]{2,}")  # letters and digits; single characters say nothing
_ASCII_WORD = re.compile(r"[a-z0-9]{2,}")  # the same on lower-cased ASCII text
_PUNCTUATION = "!$%"  # money and shouting
_LINK_START = re.compile(r"https?|ftp|www")  # on lower-cased text: a fast literal scan
_URL = re.compile(
    r"\b(?:(?:https?|ftp) ?: ?/ ?/ ?|www ?\. ?)"  # a scheme, or a bare www., spaced as in Enron-Spam
    r"((?:[a-z0-9-]{1,63} ?\. ?){1,10}[a-z]{2,24}|\d{1,3}(?: ?\. ?\d{1,3}){3})"
    r"(?! ?\. ?[a-z0-9])(:\d{1,5})?",
    re.I,
)
_EMAIL_DOMAIN = re.compile(r"@((?:[a-z0-9-]{1,63}\.){1,10}[a-z]{2,24})\b")  # matched at an "@" of lower-cased text
_HREF_HOST = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]{0,15}:)?//([^/?#\s\\]{1,255})", re.I)
_ENCODED_WORD_CHARSET = re.compile(rb"=\?([A-Za-z0-9_-]{1,40})(?:\*[A-Za-z-]*)?\?[BbQq]\?")
_ADDRESS_DOMAIN = re.compile(r"@([a-z0-9.-]{1,255})", re.I)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_CHARS_PER_WORD = 50  # text read per word wanted: more is never needed to find them
_CJK_PAIRS = 30  # character pairs taken from one run of CJK text
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ud800-\udfff]")  # and lone surrogates
# Headers whose mere presence is evidence (replies, list mail, bulk mailers' habits). Only
# these are looked at: delivery-path and corpus bookkeeping headers would leak labels.
_PRESENCE_HEADERS = frozenset(
    (
        "in-reply-to",
        "references",
        "list-id",
        "list-unsubscribe",
        "list-post",
        "list-help",
        "sender",
        "errors-to",
        "organization",
        "x-mailer",
        "user-agent",
        "x-msmail-priority",
        "x-mimeole",
        "x-priority",
        "importance",
        "disposition-notification-to",
        "cc",
        "mime-version",
        "date",
        "message-id",
        "reply-to",
        "x-originating-ip",
        "content-transfer-encoding",
        "thread-index",
        "x-face",
        "mail-followup-to",
    )
)
_GENERIC_TLDS = frozenset(["com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "name"])
_HEADER_CHARS = 1000  # of a header value read: a subject is not a body
_SHORT_SLD = 3  # "co.uk", "com.au": keep three labels when the second level is this short


CORPUS = "corpus"
SITE = "site"
PROFILES = (CORPUS, SITE)
# Never read by the site profile. Verdicts of any filter (Mailward's own included): a model
# must not learn to echo them, and they are missing on mail the milter scores first.
_SITE_IGNORED_PREFIXES = (
    "x-spam",
    "x-mailward",
    "x-virus",
    "x-rspamd",
    "x-amavis",
    "x-dspam",
    "x-bogosity",
    "x-mailscanner",
    "x-ham-report",
    "x-quarantine",
)
SITE_IGNORED = frozenset(
    (
        # authentication verdicts: the authentication detector weighs these itself
        "authentication-results",
        "arc-authentication-results",
        "received-spf",
        # mailbox and client bookkeeping (and label leaks in public corpora)
        "status",
        "x-status",
        "x-keywords",
        "x-uid",
        "content-length",
        "lines",
        "x-imap",
        # added at final delivery, after the milter scored the message: training would see them, scoring not
        "return-path",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
        "x-delivered-to",
    )
)
_SITE_HEADER_WORDS = 30  # words read from one header value under the site profile
_SITE_HEADERS = 60  # header fields read per message under the site profile
_RECEIVED_HOPS = 8  # Received fields parsed, from the top (nearest hop first)
_RECEIVED_FROM = re.compile(r"from\s+(\S+)\s*(?:\(([^()]*)\))?", re.I)  # from HELO (rDNS [IP]) ...
_BRACKET_IP = re.compile(r"\[(?:ipv6:)?([0-9a-f:.]+)\]", re.I)
_RDNS = re.compile(r"([a-z0-9][a-z0-9.-]*\.[a-z]{2,24})", re.I)
_TLS = re.compile(r"\b(?:esmtpsa?|tls|ssl)", re.I)


def is_site_ignored(name: str) -> bool:
    """Whether the ``site`` profile ignores header ``name`` (lower-case)."""
    return name in SITE_IGNORED or name.startswith(_SITE_IGNORED_PREFIXES)


@dataclass(frozen=True)
class TokenizerSettings:
    """What the tokenizer emits; stored in the model's sidecar and checked on load."""

    version: int = TOKENIZER_VERSION
    bigrams: bool = True  # adjacent word pairs (measured: much better than words alone)
    max_words: int = 1000  # words read per message: bounds the cost of huge mail (CV: no loss)
    max_text_chars: int = 20_000  # characters of text (or HTML) read per part: ample for 1000 words
    max_hosts: int = 100  # distinct link hosts read per message
    profile: str = CORPUS  # which headers are read: see the module docstring
    pair_window: int = 1  # word pairs up to this far apart (OSB); 1 = adjacent only

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown feature profile {self.profile!r}; this Mailward knows {', '.join(PROFILES)}")
        if not 1 <= self.pair_window <= 5:
            raise ValueError(f"pair_window must be 1..5, not {self.pair_window}")

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "bigrams": self.bigrams,
            "max_words": self.max_words,
            "max_text_chars": self.max_text_chars,
            "max_hosts": self.max_hosts,
            "profile": self.profile,
            "pair_window": self.pair_window,
        }


def tokenize(message: ParsedMessage, settings: TokenizerSettings = TokenizerSettings()) -> list[str]:
    """Tokens of ``message``: prefixed evidence first, then words and word pairs (duplicates kept;
    the vectorizer counts presence)."""
    found = _Collector(settings)
    found.tokens.extend(_header_tokens(message))
    if settings.profile == SITE:
        found.tokens.extend(site_header_tokens(message))
    found.add_words(message.subject[:_HEADER_CHARS])  # the subject is read as text too (measured: helps)
    text_parts = 0
    for obj in message.objects:
        if obj.is_text:
            text_parts += 1
            found.add_text_object(obj)
        elif obj.declared_type == "message/rfc822" and obj.path == "raw message":  # an unparsed message
            found.add_text(obj.text())
        elif not obj.parent:  # MIME attachments; archive members are the scanners' business
            found.tokens.extend(_attachment_tokens(obj))
    found.tokens.append(f"mime:textparts:{min(text_parts, 3)}")
    return found.finish()


class _Collector:
    """Tokens of one message under construction, with its budgets."""

    def __init__(self, settings: TokenizerSettings):
        self.settings = settings
        self.tokens: list[str] = []
        self.words: list[str] = []
        self.hosts: dict[str, None] = {}  # insertion-ordered set

    def add_words(self, text: str) -> None:
        room = self.settings.max_words - len(self.words)
        if room > 0:
            self.words.extend(words_of(text, room))

    def add_host(self, host: str) -> None:
        if len(self.hosts) < self.settings.max_hosts:
            self.hosts[host] = None

    def add_text(self, text: str) -> None:
        """Words of ``text``, plus its link hosts, address domains and money/shouting punctuation.

        Links and addresses are looked for only where a cheap scan of the lower-cased
        text finds a scheme, "www" or an "@": a regex tried at every position costs
        more than the rest of the tokenizer.
        """
        text = text[: self.settings.max_text_chars]
        if not text.isascii():  # (O(1) in CPython) the invisible characters are all non-ASCII
            text = _INVISIBLE.sub("", text)
        lowered = text.lower()
        end = 0
        for start in _LINK_START.finditer(lowered):
            if len(self.hosts) >= self.settings.max_hosts:
                break
            match = _URL.match(lowered, start.start()) if start.start() >= end else None
            if match:
                self.add_host(_unspace(match.group(1)) + (match.group(2) or ""))
                end = match.end()
        domains: set[str] = set()
        at = lowered.find("@")
        while at > 0 and len(domains) < self.settings.max_hosts:
            match = _EMAIL_DOMAIN.match(lowered, at)
            if match and (lowered[at - 1].isalnum() or lowered[at - 1] in "._+-"):
                domains.add(match.group(1))
            at = lowered.find("@", at + 1)
        self.tokens.extend(f"email:dom:{registrable_domain(d)}" for d in sorted(domains))
        self.tokens.extend(f"punct:{p}" for p in _PUNCTUATION if p in text)
        self.add_words(text)

    def add_text_object(self, obj: ContentObject) -> None:
        if obj.charset:
            self.tokens.append(f"mime:charset:{obj.charset.lower()[:40]}")
        text = obj.text()[: self.settings.max_text_chars]
        if obj.declared_type != "text/html":
            self.add_text(text)
            return
        page = html_to_text(text)
        self.tokens.extend(f"html:tag:{tag}" for tag in sorted(page.tags))
        self.tokens.extend(f"html:trick:{trick}" for trick in sorted(page.tricks))
        for href, anchor in page.links[: self.settings.max_hosts]:
            host = _href_host(href)
            if host:
                self.add_host(host)
                shown = _URL.search(anchor[:300])
                if shown and registrable_domain(_unspace(shown.group(1))) != registrable_domain(host.lstrip("@")):
                    self.tokens.append("url:shown-differs")
            elif href[:7].lower() == "mailto:":
                self.tokens.append("url:mailto")
        sources = {_href_host(src) for src in page.sources[: self.settings.max_hosts]}
        self.tokens.extend(f"html:src:{registrable_domain(h.lstrip('@'))}" for h in sorted(sources) if h)
        self.tokens.append(f"html:links:{_bucket(len(page.links))}")
        self.add_text(page.text)

    def finish(self) -> list[str]:
        out = self.tokens
        for host in self.hosts:
            out.extend(_host_tokens(host))
        words = self.words
        out.extend(words)
        if self.settings.bigrams:
            out.extend(map(" ".join, zip(words, words[1:])))
            for gap in range(1, self.settings.pair_window):  # sparse pairs, the skip marked (OSB)
                out.extend(f"{a} {'~' * gap} {b}" for a, b in zip(words, words[gap + 1 :]))
        out.append(f"len:{_bucket(len(words))}")
        return out


def words_of(text: str, limit: int = 1 << 30) -> list[str]:
    """Up to ``limit`` words: NFKC, case-folded, invisible characters dropped, numbers and long
    runs generalised, CJK (written without spaces) split into character pairs.

    ASCII text (most mail) skips the steps that cannot change it: NFKC, the invisible
    characters and CJK are all outside ASCII, and there casefold is lower.
    """
    text = text[: _CHARS_PER_WORD * limit]
    if text.isascii():  # O(1) in CPython
        words = _ASCII_WORD.findall(text.lower())
        return [w if len(w) <= 4 or (len(w) <= 20 and not w.isdigit()) else _generalised(w) for w in words[:limit]]
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold()
    words = _WORD.findall(text)
    if not _CJK.search(text):  # the common case: one token per word
        return [w if len(w) <= 4 or (len(w) <= 20 and not w.isdigit()) else _generalised(w) for w in words[:limit]]
    out: list[str] = []
    for word in words:
        if _CJK.search(word):
            out.extend(word[i : i + 2] for i in range(min(len(word) - 1, _CJK_PAIRS)))
        else:
            out.append(word if len(word) <= 4 or (len(word) <= 20 and not word.isdigit()) else _generalised(word))
        if len(out) >= limit:
            break
    return out[:limit]


def _generalised(word: str) -> str:
    return f"num:{min(len(word), 12)}" if word.isdigit() else "shape:longword"


def registrable_domain(host: str) -> str:
    """A cheap eTLD+1 ("mail.ebay.co.uk" -> "ebay.co.uk"); no public suffix list on purpose."""
    labels = [label for label in host.lower().strip(".").split(".") if label]
    if len(labels) <= 2:
        return ".".join(labels)
    keep = 3 if len(labels[-1]) == 2 and len(labels[-2]) <= _SHORT_SLD else 2
    return ".".join(labels[-keep:])


def _header_tokens(message: ParsedMessage) -> Iterable[str]:
    subject = message.subject[:_HEADER_CHARS]
    for word in words_of(subject):
        yield f"subject:{word}"
    if subject and sum(map(str.isupper, subject)) > 0.6 * max(1, sum(map(str.isalpha, subject))):
        yield "subject:shape:caps"
    if "!!" in subject or "$" in subject:
        yield "subject:shape:money-or-shout"

    sender = message.header("from")[:_HEADER_CHARS]
    sender_domain = _domain_of(sender)
    if sender:
        yield f"from:dom:{registrable_domain(sender_domain)}" if sender_domain else "from:no-domain"
        name = sender.split("<", 1)[0]
        for word in words_of(name):
            yield f"from:name:{word}"
        if "@" in name and sender_domain and sender_domain not in name.lower():
            yield "from:name-has-other-address"
    reply_to = _domain_of(message.header("reply-to")[:_HEADER_CHARS])
    if reply_to:
        yield f"replyto:dom:{registrable_domain(reply_to)}"
        if sender_domain and registrable_domain(reply_to) != registrable_domain(sender_domain):
            yield "replyto:other-domain"
    for field in ("x-mailer", "user-agent"):
        value = message.header(field)[:_HEADER_CHARS]
        if value:
            for word in words_of(value, 4):
                yield f"mailer:{word}"
    present = message.header_names()
    for name in sorted(present & _PRESENCE_HEADERS):
        yield f"header:has:{name}"
    for name in ("precedence", "x-priority", "importance"):
        value = message.header(name).strip().lower()[:12]
        if value:
            yield f"header:{name}:{value.split()[0]}"
    msgid_domain = _domain_of(message.header("message-id")[:_HEADER_CHARS])
    if msgid_domain:
        yield f"msgid:dom:{registrable_domain(msgid_domain)}"
        if sender_domain and registrable_domain(msgid_domain) != registrable_domain(sender_domain):
            yield "msgid:other-domain"
    content_type = message.header("content-type").split(";", 1)[0].strip().lower()
    if content_type:
        yield f"mime:root:{content_type[:60]}"
    for charset in sorted(set(_ENCODED_WORD_CHARSET.findall(message.raw_headers[:65536]))):
        yield f"header:charset:{charset.decode('ascii').lower()}"


def _domain_of(address: str) -> str:
    match = None
    for match in _ADDRESS_DOMAIN.finditer(address):  # noqa: B007  (the last match is the one wanted)
        pass
    return match.group(1).lower().strip(".") if match else ""


def _href_host(href: str) -> str:
    match = _HREF_HOST.match(href)
    if not match:
        return ""
    host = match.group(1).rsplit("@", 1)
    return ("@" if len(host) == 2 else "") + host[-1].lower()


def _host_tokens(host: str) -> list[str]:
    """Evidence from one link target: its domain, TLD, and tricks (raw IP, userinfo, port)."""
    out = []
    if host.startswith("@"):
        out.append("url:userinfo")
        host = host[1:]
    host, _, port = host.partition(":")
    host = host.strip(".").lower()
    if port:
        out.append("url:port")
    if _IPV4.match(host) or host.startswith("["):
        return out + ["url:ip"]
    if not host or "." not in host:
        return out
    out.append(f"url:dom:{registrable_domain(host)}")
    out.append(f"url:tld:{host.rsplit('.', 1)[1][:24]}")
    return out


def _unspace(host: str) -> str:
    """Join a host written with spaces ("www . x . com . next"), ending it at the first generic TLD:
    pre-tokenised text puts the same " . " between a host and the next sentence."""
    if " " not in host:
        return host
    labels = [label for label in host.replace(" ", "").split(".") if label]
    for i, label in enumerate(labels[1:], 2):
        if label in _GENERIC_TLDS:
            return ".".join(labels[:i])
    return ".".join(labels)


def _attachment_tokens(obj: ContentObject) -> list[str]:
    out = [f"att:type:{obj.declared_type[:60]}"]
    for name in obj.names:
        stem, dot, ext = name.lower().rpartition(".")
        if dot and stem and 0 < len(ext) <= 8:
            out.append(f"att:ext:{ext}")
    return out


def _bucket(n: int) -> int:
    """Logarithmic size class: 0, 1, 2-3, 4-7, …"""
    return 0 if n <= 0 else 1 + int(math.log2(n))


def site_header_tokens(message: ParsedMessage) -> list[str]:
    """The ``site`` profile's header evidence: every readable header's words under its name (the
    nearest ``Received`` hops' too), plus structured tokens from ``Received`` and the recipients."""
    out: list[str] = []
    received: list[str] = []
    for name, value in message.headers[: _SITE_HEADERS * 4]:
        key = name.strip().lower()[:40]
        if is_site_ignored(key):
            continue
        if key == "received":
            received.append(value)
            if len(received) > _RECEIVED_HOPS:
                continue  # its words as well as its structure (measured: both help)
        if len(out) < _SITE_HEADERS * _SITE_HEADER_WORDS:
            out.append(f"h:{key}")
            out.extend(f"h:{key}:{word}" for word in words_of(value[:_HEADER_CHARS], _SITE_HEADER_WORDS))
    out.extend(received_tokens(received))
    out.extend(recipient_tokens(message))
    return out


def received_tokens(fields: list[str]) -> list[str]:
    """Relay evidence from ``Received`` fields, nearest hop first: who handed the message on
    (IP, its /24, HELO and reverse-DNS domains and whether they agree), TLS, and the hop count."""
    out = [f"rcvd:hops:{_bucket(len(fields))}"]
    for hop, value in enumerate(fields[:_RECEIVED_HOPS]):
        value = " ".join(value[:_HEADER_CHARS].split())
        match = _RECEIVED_FROM.search(value)
        if _TLS.search(value):
            out.append("rcvd:tls")
        if not match:
            out.append("rcvd:no-from")
            continue
        helo, comment = match.group(1).strip("[]()").lower(), match.group(2) or ""
        ip_match = _BRACKET_IP.search(comment) or _BRACKET_IP.search(match.group(0))
        rdns_match = _RDNS.match(comment.strip())
        rdns = rdns_match.group(1).lower() if rdns_match else ""
        where = "first" if hop == 0 else "relay"  # the hop this host made first, or one further out
        if ip_match:
            ip = ip_match.group(1).lower()
            out.append(f"rcvd:ip:{ip}")
            if _IPV4.match(ip):
                out.append(f"rcvd:net:{ip.rsplit('.', 1)[0]}")
                if ip.startswith(("10.", "127.", "192.168.")) or re.match(r"172\.(1[6-9]|2\d|3[01])\.", ip):
                    out.append("rcvd:private-ip")
        if helo and not _IPV4.match(helo):
            out.append(f"rcvd:helo:{registrable_domain(helo)}")
        elif helo:
            out.append("rcvd:helo:is-ip")
        if rdns:
            out.append(f"rcvd:rdns:{registrable_domain(rdns)}")
        agree = (
            "no-rdns"
            if not rdns
            else "same"
            if rdns == helo
            else "same-domain"
            if registrable_domain(rdns) == registrable_domain(helo)
            else "differ"
        )
        out.append(f"rcvd:{where}:helo-rdns:{agree}")
    return out


def recipient_tokens(message: ParsedMessage) -> list[str]:
    """How many recipients and in which domains; whether they were hidden (undisclosed or no To)."""
    out: list[str] = []
    addresses: list[str] = []
    for field in ("to", "cc"):
        values = message.header_all(field)
        if field == "to" and not values:
            out.append("rcpt:no-to")
        for value in values:
            value = value[:_HEADER_CHARS]
            if "undisclosed" in value.lower() or re.search(r":\s*;", value):
                out.append(f"rcpt:{field}:undisclosed")
            addresses.extend(_ADDRESS_DOMAIN.findall(value))
    out.append(f"rcpt:count:{_bucket(len(addresses))}")
    out.extend(f"rcpt:dom:{d}" for d in sorted({registrable_domain(a) for a in addresses[:50]}))
    return out
