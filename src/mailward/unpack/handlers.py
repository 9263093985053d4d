"""Which handler opens which kind of object, and whether it must run in the sandbox.

Handlers are imported on first use: a scanner that only ever sees text never
loads oletools, pikepdf or py7zr.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .model import Allowance, Unpacked
from .sniff import Kind

HandlerFunction = Callable[[bytes, str, Allowance], Unpacked]


@dataclass(frozen=True)
class Handler:
    module: str
    function: str
    isolated: bool  # fragile parser: runs in the sandbox with a hard time and memory limit

    def load(self) -> HandlerFunction:
        function: HandlerFunction = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)
        return function


HANDLERS: dict[Kind, Handler] = {
    # stdlib parsers driven by our own bounded loops: safe in process
    Kind.ZIP: Handler("zip", "unpack", False),
    Kind.TAR: Handler("tar", "unpack", False),
    Kind.GZIP: Handler("compressed", "unpack_gzip", False),
    Kind.BZIP2: Handler("compressed", "unpack_bzip2", False),
    Kind.XZ: Handler("compressed", "unpack_xz", False),
    Kind.TEXT: Handler("uuencode", "unpack", False),  # files encoded in text, in any object (message.py)
    Kind.OTHER: Handler("carve", "unpack", False),  # archives behind other bytes, in any object (message.py)
    Kind.HTML: Handler("datauri", "unpack", False),  # files in base64 data: URIs
    # third-party parsers of complex formats: sandboxed
    Kind.SEVENZIP: Handler("sevenzip", "unpack", True),
    Kind.RAR: Handler("rar", "unpack", True),
    Kind.ISO: Handler("iso", "unpack", True),
    Kind.TNEF: Handler("tnef", "unpack", True),
    Kind.OLE: Handler("office", "unpack_ole", True),
    Kind.RTF: Handler("office", "unpack_rtf", True),
    Kind.PDF: Handler("pdf", "unpack", True),
}
