"""Typed errors. The CLI turns each into one red line and a non-zero exit code.

Every message says what is wrong and how to fix it: the field, the value received and what
is allowed. Raise these for anything a user can cause; never ``assert`` on user input.
"""

from __future__ import annotations


class EdgexferError(Exception):
    """Base class of every error a user can cause. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(EdgexferError):
    """An option or config value is out of range, unknown or inconsistent."""


class DataError(EdgexferError):
    """An image folder or dataset is missing, empty, corrupt or inconsistent."""


class ArtifactError(EdgexferError):
    """An artifact directory is missing, incomplete or of an unknown schema."""


class BackboneError(EdgexferError):
    """A backbone name is unknown or its weights cannot be had."""


class ExportError(EdgexferError):
    """A model cannot be converted to the asked format."""


class ParityError(EdgexferError):
    """An exported model fails a parity or accuracy gate."""

    exit_code = 3
