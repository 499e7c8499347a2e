"""The project's own exception types: what a user can fix (a config value, a path, a file),
each raised with a message that names the fix.

The command-line entry points print these as one message and exit 1 (no traceback; a run's
results.json keeps it); anything else is a bug and keeps its traceback. Each type also derives
from the built-in it replaces (``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so code
that caught those still does.
"""

from __future__ import annotations


class LoraJaxError(Exception):
    """Base of every error a user can fix."""


class ConfigError(LoraJaxError, ValueError):
    """A config value (or combination) that a run does not accept."""


class DataError(LoraJaxError, ValueError):
    """A dataset, file or checkpoint whose content is not what it must be."""


class MissingFile(LoraJaxError, FileNotFoundError):
    """A path that does not exist (data files, model files, run dirs)."""


class CheckpointError(LoraJaxError, RuntimeError):
    """A checkpoint directory that cannot be written, resumed or restored as asked."""


class AdapterMismatch(LoraJaxError, ValueError):
    """A saved adapter that does not fit this model or LoRA config."""


class RunDirInUse(LoraJaxError, RuntimeError):
    """Another live process holds the run dir."""


class NonFiniteLoss(LoraJaxError, RuntimeError):
    """The loss or the adapter parameters became NaN/inf."""
