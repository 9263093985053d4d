"""Password candidates for encrypted archives, from the words around "password" in the message.

Malware senders put the password next to the archive ("Password: 1234") so the
victim can open it; trying those few words lets us scan what the victim would see.
"""

from __future__ import annotations

import html
import re

_KEYWORDS = (
    r"passwords?|passwort|kennwort|passcode|passwd|pwd|pw|pass|code|mot\s+de\s+passe|contrase[ñn]a|senha"
    r"|parola|wachtwoord|has[łl]o|l[öo]senord|adgangskode|salasana|пароль|密码|密碼|パスワード|비밀번호"
)
_AFTER_KEYWORD = re.compile(
    rf"(?:{_KEYWORDS})\s*(?:is|ist|est|es|é|:|=|-|–|—)?\s*[:=]?\s*[\"'“‘«„]?([^\s\"'”’»<>]{{3,32}})", re.I
)
_TAGS = re.compile(r"<[^>]{0,1000}>")
_TRAILING = ".,;:!?)]}"


def password_candidates(texts: list[str], limit: int) -> tuple[str, ...]:
    """Up to ``limit`` distinct candidates, in order of appearance."""
    found: dict[str, None] = {}
    for text in texts:
        if len(found) >= limit:
            break
        plain = html.unescape(_TAGS.sub(" ", text)) if "<" in text else text
        plain = " ".join(plain.split())  # the pattern's three \s* would backtrack cubically over a long run
        for match in _AFTER_KEYWORD.finditer(plain):
            word = match.group(1).rstrip(_TRAILING)
            if len(word) >= 3 and word.lower() not in ("the", "for", "this", "below", "attached", "is"):
                found.setdefault(word, None)
                if len(found) >= limit:
                    break
    return tuple(found)
