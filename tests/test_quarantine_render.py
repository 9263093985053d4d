"""Safe rendering of hostile message content for analysts."""

from __future__ import annotations

from mailward.quarantine.render import inspect_message, neutralise


def test_neutralise_escapes_controls_and_format_characters():
    assert neutralise("a\x1b[2Jb\x00c\x7f") == "a\\x1b[2Jb\\x00c\\x7f"
    assert neutralise("file\u202etxt.exe\u200b") == "file\\u202etxt.exe\\u200b"
    assert neutralise("x\u2028y") == "x\\u2028y"
    assert neutralise("line\r\nnext\ttab", multiline=True) == "line\nnext\ttab"
    assert neutralise("line\nnext") == "line\\x0anext"
    assert neutralise("café ünïcode ✓") == "café ünïcode ✓"


def test_deep_and_wide_structures_are_bounded():
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for i in range(1, 40):
        deep += f"--b{i - 1}\r\nContent-Type: multipart/mixed; boundary=b{i}\r\n\r\n".encode()
    view = inspect_message(deep, max_parts=1000, max_depth=10)
    assert max(p.depth for p in view.parts) <= 10 and "deeper than 10" in view.problem

    wide = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 50 + b"--b--\r\n"
    view = inspect_message(wide, max_parts=20)
    assert len(view.parts) == 20 and "more than 20 parts" in view.problem


def test_long_text_is_truncated_and_undecodable_text_still_shown():
    raw = b"Content-Type: text/plain; charset=x-unknown\r\n\r\n" + b"\xff" * 70000
    [part] = inspect_message(raw).parts
    assert part.truncated and len(part.text) == 64 * 1024
    assert part.size == 70000
