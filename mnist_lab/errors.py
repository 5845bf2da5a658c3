"""The one exception type users see, and how untrusted text reaches the terminal.

Anything raised as `LabError` is a problem with the input or the environment
(unknown model, corrupt data, no GPU): the CLI prints its message on one line and
exits non-zero instead of showing a traceback.

Messages quote names and fields that came from disk or an archive (member names, run
folders, record fields, a lock file's text). A newline there could forge a line of output
and an escape sequence could drive the terminal, so every such text is printed through
`printable`: control characters escaped, long text cut.
"""

from __future__ import annotations

import unicodedata

MAX_LINE = 300  # the most characters one error line the command line prints may have
CUT = "…"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


class LabError(Exception):
    """A user-facing error whose message says what is wrong and what to do."""


def shortlist(items: list[str], shown: int = 3) -> list[str]:
    """The first `shown` items and "N more": a message names what changed, however much did."""
    items = list(items)
    return items if len(items) <= shown + 1 else [*items[:shown], f"{len(items) - shown} more"]


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    # Cc: C0/C1 controls and DEL; Cf: bidirectional overrides and other invisible formatting that
    # can make a name read as another; Zl/Zp: line and paragraph separators, which some terminals break on.
    if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return char


def printable(text, limit: int = MAX_LINE) -> str:
    """`text` as one safe line of at most `limit` characters: control characters in escaped form,
    and, if too long, its middle cut out and marked with "…" (the end of a message usually says
    what to do, so it is kept)."""
    text = str(text)
    if text.isprintable() and len(text) <= limit:
        return text
    # Escaping can at most multiply the length by 10; no more of a huge text is looked at than is kept.
    head_size = max(1, (limit * 2) // 3)
    if len(text) > 20 * limit:
        text = text[:10 * limit] + text[-10 * limit:]
    escaped = "".join(_escaped(char) for char in text)
    if len(escaped) <= limit:
        return escaped
    if limit <= len(CUT):
        return CUT[:limit]
    tail_size = limit - head_size - len(CUT)
    return escaped[:head_size] + CUT + (escaped[-tail_size:] if tail_size > 0 else "")
