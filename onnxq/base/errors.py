"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class OnnxqError(Exception):
    """A problem with the user's input (file, flag, data), reported without a traceback."""
