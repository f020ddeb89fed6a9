"""Error types. Each carries a one-line message that names the problem and the fix, and the
exit code the CLI uses for it. Library code raises these; only the CLI (cli/options.py) turns them into exits."""

from __future__ import annotations


class SD2TFLiteError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(SD2TFLiteError):
    """Bad options or arguments."""

    exit_code = 2


class WeightsError(SD2TFLiteError):
    """Weights missing, unreadable, corrupt or of the wrong shapes."""


class OutputDirError(SD2TFLiteError):
    """The output directory cannot be used without destroying something."""


class PlanError(SD2TFLiteError):
    """No split plan satisfies the constraints."""


class ConversionError(SD2TFLiteError):
    """The TFLite converter failed or produced an unusable file."""


class ManifestError(SD2TFLiteError):
    """A manifest is missing, unreadable or does not describe the files beside it."""


class OutputError(SD2TFLiteError):
    """A file cannot be written (permissions, a full disk, a folder that takes no files)."""


class NumericsError(SD2TFLiteError):
    """NaN or Inf where numbers must be finite: an input, or a component's output."""


class HubError(SD2TFLiteError):
    """The Hugging Face Hub refused, could not be reached, or has no usable set at the address."""
