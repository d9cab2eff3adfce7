"""Error types. Library code raises these; only ``cli.py`` turns them into exit codes."""

from __future__ import annotations


class GraphpruneError(Exception):
    """Base class: the message is one line, written for the user."""


class InputError(GraphpruneError):
    """Bad file, bad flag or bad plan (exit code 2)."""


class ValidationFailed(GraphpruneError):
    """The pruned model failed the validation contract (exit code 1)."""
