"""Errors raised for bad user input. The CLI prints their message, not a traceback."""

import sys


class LLMMTLError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it."""


class ConfigError(LLMMTLError):
    """A config key, value, model name or model path is wrong."""


class DataError(LLMMTLError):
    """A dataset file, column or row is wrong."""


class CacheError(LLMMTLError):
    """A cache file is unusable (it is then rebuilt, never trusted)."""


class TrainingError(LLMMTLError):
    """Training cannot go on (e.g. a task's loss became NaN/inf)."""


def report(error):
    """Print ``error`` as the one line a command shows for bad input; return exit code 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2
