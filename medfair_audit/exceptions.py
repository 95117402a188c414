"""The error hierarchy of medfair.

Every error that a user can cause by what they pass in is a :class:`MedfairError`. It carries the
name of the argument at fault (``param``), so that the CLI can print one line such as
``error: --labels: 'x.csv' has no column 'sex' (found: file, age)`` and exit with code 2. Anything
else that escapes is a bug and keeps its traceback.

Messages that tests assert are module constants, as in fairlearn.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "MedfairError",
    "ModelError",
    "ResourceError",
]

# Message templates shared by the library and asserted by tests.
MSG_NOT_A_DIR = "folder '{path}' does not exist or is not a folder"
MSG_NOT_A_FILE = "file '{path}' does not exist or is not a file"
MSG_MISSING_COLUMN = "'{path}' has no column '{column}' (found: {found})"
MSG_EMPTY_DATASET = "no images found in '{path}'"
MSG_TARGET_SUM = "target proportions must sum to 1 (within 1e-6), got {total:.6g}"
MSG_TARGET_NEGATIVE = "expected a finite proportion ≥ 0 for '{group}', got {value:.6g}"
MSG_TARGET_TWO_GROUPS = "a target needs at least two groups, got {n}"
MSG_UNKNOWN_GROUPS = "labels outside the known groups {known}: {unknown}"
MSG_OUT_EXISTS = "'{path}' exists and is not empty; pass --overwrite to replace it"


class MedfairError(Exception):
    """Base class of all errors caused by user input.

    Args:
        message: What is wrong and what was expected, in one line.
        param: Name of the argument at fault (library keyword; the CLI shows it as ``--param``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class ConfigError(MedfairError, ValueError):
    """An argument has an invalid value (range, type, combination)."""


class DataError(MedfairError):
    """Input data is missing, unreadable or does not have the expected layout."""


class ModelError(MedfairError):
    """A model folder or weights file is missing, unsafe or not of the expected kind."""


class ResourceError(MedfairError):
    """The run needs more of a resource than there is (memory at the chosen batch size)."""
