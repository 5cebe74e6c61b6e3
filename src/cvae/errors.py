"""Errors meant for the user: each says what was wrong and what to do."""

from __future__ import annotations


class CvaeError(Exception):
    """A problem with the user's input, files or flags.

    The command-line tool prints the message on one line (the traceback only with ``--debug``)
    and exits with status 2. The message must name the file, column, flag or value at fault and
    say what to do about it.
    """


class CvaeWarning(Warning):
    """Something cvae repaired or worked around and the user should know of (shown by the CLI as
    one ``warning:`` line, also without --debug)."""


def quoted(text: str, limit: int = 80) -> str:
    """``repr(text)`` for a message, shortened past ``limit`` characters (a 20,000-character input must
    not become a 20,000-character error line)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit // 2]!r}...{text[-limit // 4:]!r} ({len(text):,} characters)"
