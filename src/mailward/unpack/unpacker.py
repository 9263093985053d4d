"""One entry point for message.py: sniff an object, and unpack it in process or in the sandbox."""

from __future__ import annotations

import logging

from ..config import LimitSettings
from .handlers import HANDLERS
from .model import Allowance, Stop, Unpacked, stopped
from .sandbox import Sandbox
from .sniff import Kind, Sniffed, Sniffer

log = logging.getLogger(__name__)


class Unpacker:
    """Owns the libmagic handle and the parser sandbox; reuse one per worker process."""

    def __init__(self, limits: LimitSettings, sandbox: Sandbox | None = None, sniffer: Sniffer | None = None):
        self.sandbox = sandbox or Sandbox(limits.parser_timeout, limits.parser_memory)
        self.sniffer = sniffer or Sniffer()

    def sniff(self, data: bytes, declared_text: str = "") -> Sniffed:
        return self.sniffer.sniff(data, declared_text)

    @staticmethod
    def handles(kind: Kind) -> bool:
        return kind in HANDLERS

    def unpack(self, kind: Kind, data: bytes, name: str, allowance: Allowance) -> Unpacked:
        handler = HANDLERS[kind]
        if handler.isolated:
            return self.sandbox.run(kind, data, name, allowance)
        try:
            return handler.load()(data, name, allowance)
        except Exception as exc:  # a handler bug on hostile input must become evidence, not a crash
            log.exception("%s handler failed on %s", kind.value, name)
            return stopped(Stop.CRASH, f"{kind.value} handler: {type(exc).__name__}")

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self) -> Unpacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
