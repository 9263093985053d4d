"""Files on ISO 9660 / Joliet / Rock Ridge / UDF images (also .img files that are ISO images).

Reads the richest name space the image has (UDF, then Joliet, Rock Ridge,
plain ISO 9660): those long names are the ones Windows shows the victim.
"""

from __future__ import annotations

import io

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from .meter import Meter
from .model import Allowance, Collector, Member, MemberState, Stop, Unpacked, stopped

_FAILURES = (PyCdlibException, ValueError, OSError, EOFError, KeyError, IndexError, TypeError, RecursionError)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    image = pycdlib.PyCdlib()
    try:
        image.open_fp(io.BytesIO(data))
        facade = (
            "udf_path"
            if image.has_udf()
            else "joliet_path"
            if image.has_joliet()
            else "rr_path"
            if image.has_rock_ridge()
            else "iso_path"
        )
        paths = [f"{top.rstrip('/')}/{f}" for top, _, files in image.walk(**{facade: "/"}) for f in files]
    except _FAILURES as exc:
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    out = Collector()
    if len(paths) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(paths)} files")
        paths = paths[: allowance.members]
    meter = Meter(allowance, len(data))
    for path in paths:
        shown = path.lstrip("/").removesuffix(";1")
        try:
            with image.open_file_from_iso(**{facade: path}) as stream:
                content, problem = meter.read(stream)
        except _FAILURES as exc:
            out.members.append(Member(shown, state=MemberState.UNREAD))
            out.stop(Stop.CORRUPT, f"{shown}: {type(exc).__name__}")
            continue
        out.members.append(Member(shown, content, MemberState.COMPLETE if problem is None else MemberState.TRUNCATED))
        if problem is not None:
            out.incomplete.append(problem)
            break
    return out.result()
