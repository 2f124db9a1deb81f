"""The two kinds of failure a user can meet, and their exit codes.

`InputError` is the user's to fix (a bad file, flag, config key or a missing index): exit 2.
`RunError` is a failure while doing valid work (a model that will not load, a disk that
fills): exit 1. Both carry a one-line message that names the thing at fault and the fix;
the CLI prints it without a traceback.
"""

from __future__ import annotations


class SearchpipeError(Exception):
    exit_code = 1


class InputError(SearchpipeError):
    """Bad input from the user: a file, flag, config key or name. Exit code 2."""

    exit_code = 2


class RunError(SearchpipeError):
    """A runtime failure on valid input. Exit code 1."""

    exit_code = 1
