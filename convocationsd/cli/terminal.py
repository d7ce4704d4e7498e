"""Text bound for the person's terminal. Much of what convctl prints comes from elsewhere (the daemon,
OpenRouter through it, /proc, lsof, systemctl, config files), and a terminal obeys what it is sent: ESC
starts sequences that move the cursor, retitle the window or make links (CSI, OSC), CR and LF forge lines,
bidirectional controls reorder what is shown. ``Out`` passes every line through here, so no command has to
remember to.
"""

from __future__ import annotations

import functools
import json
import re

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:
    from typing import Any

# C0 controls (ESC, BEL, CR, LF, TAB, ...), DEL and C1 controls (8-bit CSI, OSC, NEL, ...); the bidirectional
# marks, embeddings, overrides and isolates; line and paragraph separators; and lone surrogates, which JSON
# may carry and no terminal encoding can write. None of them is printable (``str.isprintable``), so text
# that is printable throughout, almost every line, skips the pattern, and a command that prints only such
# lines never compiles it (compiling it was 4 % of a `convctl status`).
UNSAFE = "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"


@functools.cache
def _unsafe() -> re.Pattern[str]:
    return re.compile(UNSAFE)


def safe_line(text: str) -> str:
    """``text`` as one inert line: each unsafe character is shown as its Python escape (ESC as ``\\x1b``,
    a newline as ``\\n``, a right-to-left override as ``\\u202e``), so the person sees that it was there."""
    if text.isprintable():
        return text
    return _unsafe().sub(lambda m: ascii(m.group())[1:-1], text)


def safe_json(data: Any) -> str:
    """``data`` as one line of JSON whose text is inert on a terminal. json.dumps escapes the C0 controls
    itself; the rest of UNSAFE can only occur inside strings, where a ``\\u`` escape (``\\u001b``) means the
    same character, so a program reading the line gets exactly ``data`` back."""
    text = json.dumps(data, ensure_ascii=False)
    if text.isprintable():
        return text
    return _unsafe().sub(lambda m: f"\\u{ord(m.group()):04x}", text)
