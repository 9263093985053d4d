"""Helpers for the reputation tests: settings aimed at the loopback DNS server, messages, DKIM keys."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailward.config import LimitSettings, Settings, load_settings
from mailward.envelope import Direction, Envelope
from mailward.message import ParsedMessage, parse_message
from mailward.reputation import spf_check
from mailward.reputation.detector import ReputationDetector


@pytest.fixture(autouse=True)
def no_system_resolver(monkeypatch):
    """Fail loudly if anything would read /etc/resolv.conf or take a library's default DNS path."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test reached for the system resolver")

    monkeypatch.setattr(dns.resolver.Resolver, "read_resolv_conf", refuse)
    monkeypatch.setattr(dns.resolver, "default_resolver", None)
    monkeypatch.setattr(dns.resolver, "reset_default_resolver", refuse)
    monkeypatch.setattr(spf_check, "_library_lookup", refuse)


def settings_for(port: int, **reputation) -> Settings:
    """Mailward settings whose resolver is the loopback server on ``port``, and nothing else."""
    values = {"nameservers": ["127.0.0.1"], "port": port, "budget": 2.0, "query_timeout": 1.0}
    values.update(reputation)
    return load_settings(overrides={"reputation": values})


def detector_for(port: int, **reputation) -> ReputationDetector:
    detector = ReputationDetector.from_settings(settings_for(port, **reputation))
    assert detector.client.nameservers == ("127.0.0.1",)
    return detector


def envelope(
    client: str = "192.0.2.10",
    mail_from: str = "alice@sender.test",
    helo: str = "mx.sender.test",
    client_name: str = "",
    direction: Direction = Direction.INBOUND,
) -> Envelope:
    return Envelope(
        mail_from=mail_from,
        recipients=("bob@dest.test",),
        client_address=client,
        client_name=client_name,
        helo=helo,
        direction=direction,
        queue_id="TESTQ",
    )


def parse(raw: bytes) -> ParsedMessage:
    return parse_message(raw, LimitSettings())


def txt(text: str) -> str:
    """A TXT record's data in zone-file form, split into 255-byte character-strings."""
    return " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


@dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    public_b64: str

    @classmethod
    def generate(cls, bits: int = 2048) -> DkimKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(pem, base64.b64encode(der).decode())

    def record(self) -> str:
        return txt(f"v=DKIM1; k=rsa; p={self.public_b64}")

    def sign(self, raw: bytes, domain: str, selector: str = "sel", **options) -> bytes:
        """``raw`` with a DKIM-Signature on top; ``options`` go to ``dkim.sign`` (length, signature_algorithm)."""
        options.setdefault("include_headers", [b"from", b"to", b"subject", b"date", b"message-id"])
        signature = dkim.sign(raw, selector.encode(), domain.encode(), self.private_pem, **options)
        return signature.replace(b"\r\n", b"\n") + raw
