"""User-facing error type shared by every package.

CLIs catch `UserError` and print its message as one line (no traceback), so anything a user can
fix by changing their input raises this (or a subclass), never a bare exception.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; the message says what is wrong and what is expected."""


class SpecError(UserError, ValueError):
    """An architecture spec (or its JSON) is malformed or violates a rule."""
