"""The one exception hierarchy of hotswap.

It lives in ``kernels/`` because that is the leaf of the package stack
(kernels <- models <- compat <- index <- cli): every layer may raise these, and the
CLI maps them to exit codes in one place. Every error carries the offending value,
the options and, where there is one, the fix.
"""

from __future__ import annotations


class HotswapError(Exception):
    """Base class: a domain error the user can act on (never a bug in hotswap)."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} ({fix})" if fix else message)


class InvalidInputError(HotswapError, ValueError):
    """Input that cannot be used: wrong width, NaN/Inf, bad config values, bad ids."""

    exit_code = 2


class DirectionError(InvalidInputError):
    """An adapter used in the direction it was not fitted for, or between the wrong spaces."""


class NotFoundError(HotswapError, LookupError):
    """An unknown registry key, model version, space, alias or item."""

    exit_code = 3


class ConflictError(HotswapError):
    """A name or id that already exists, or a state transition that is not allowed now."""

    exit_code = 4


class CorruptArtifactError(HotswapError):
    """A file on disk whose checksum, size or contents disagree with the catalog."""

    exit_code = 5


class MissingExtraError(HotswapError, ImportError):
    """An optional dependency that is not installed; the message names the install command."""

    exit_code = 6


def did_you_mean(value: str, options: list[str]) -> str:
    """A short hint naming the closest options to a mistyped ``value``."""
    import difflib

    close = difflib.get_close_matches(value, options, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose one of: " + (", ".join(sorted(options)) or "(none registered)")
