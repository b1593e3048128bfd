"""Client-supplied text made safe to put into status messages and log lines.

Model names, versions, tensor names and datatypes come from the network.  Before
any of them reaches a message or a log line it goes through :func:`client_text`:
control characters (a newline would forge a log line), NUL, and the Unicode
format characters (bidirectional overrides such as U+202E, zero-width joiners)
are escaped repr-style (``\\n``, ``\\x00``, ``\\u202e``), backslashes are
doubled so an escape cannot be faked, and the result is cut to a few dozen
characters so a 20,000-character name cannot blow up a status message.

:func:`bounded_message` is the last guard at the transport boundary: it escapes
what :func:`client_text` would (except backslashes, which are already doubled)
and caps a whole message.

Example::

    client_text("a\\nCRITICAL forged")   # 'a\\\\nCRITICAL forged'
    client_text("x" * 20_000)           # 'xxx...x... (20000 characters)'
"""

from __future__ import annotations

CLIENT_TEXT_LIMIT = 64
MESSAGE_LIMIT = 1024


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escaped(text: str, backslash: bool) -> str:
    # str.isprintable() is False for control (Cc), format (Cf: bidi overrides,
    # zero-width characters), separators other than space, and unassigned code points.
    parts = []
    for char in text:
        if char == "\\" and backslash:
            parts.append("\\\\")
        elif char == "\n":
            parts.append("\\n")
        elif char == "\r":
            parts.append("\\r")
        elif char == "\t":
            parts.append("\\t")
        elif char.isprintable():
            parts.append(char)
        else:
            parts.append(_escape(char))
    return "".join(parts)


def client_text(value: object, limit: int = CLIENT_TEXT_LIMIT) -> str:
    """``value`` (str or bytes from a client) escaped and cut to about ``limit`` characters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value)[:4 * limit].decode("utf-8", errors="backslashreplace")
        size = len(value)
    else:
        text = str(value)
        size = len(text)
    if size > limit:
        return _escaped(text[:limit], backslash=True) + f"... ({size} characters)"
    return _escaped(text, backslash=True)


def bounded_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole status message or log text: non-printables escaped, at most ``limit`` characters."""
    text = _escaped(str(text)[:limit + 1], backslash=False)
    return text if len(text) <= limit else text[:limit] + "..."
