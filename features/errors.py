"""The project's user-error types: inputs a user can fix (a file, a manifest row, an option).

The command line prints these as one line with exit code 2. Any other exception is a bug in
cslr-pipe or a library, and keeps its traceback. Each type derives from the built-in exception a
caller of the Python API would expect (ValueError, FileNotFoundError), so `except ValueError` still
catches them.
"""

from __future__ import annotations


class InputError(ValueError):
    """An input the user gave cannot be used: a file, a manifest row, an option or a config value."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named (or one a default points to) is not there."""
