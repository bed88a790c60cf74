"""The errors every layer raises: the bottom of the package (imports nothing from it)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (flags, files, data): printed as one paragraph, exit code 2."""


__all__ = ["UserError"]
