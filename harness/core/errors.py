"""One exception type for every user-facing mistake, so the CLI can print it cleanly and exit non-zero."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input from the user: unknown name, unknown key, malformed file, missing data.

    The message must say what was wrong, where, and what is valid.
    """


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss: the cell fails and no result is recorded."""


def unknown(kind: str, name: object, valid: list[str] | tuple[str, ...], where: str = "") -> ConfigError:
    """Build the standard 'unknown X' error naming the valid choices."""
    loc = f" in {where}" if where else ""
    return ConfigError(f"unknown {kind} {name!r}{loc}; valid: {', '.join(sorted(map(str, valid)))}")
