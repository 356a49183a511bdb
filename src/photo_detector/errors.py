"""User-facing errors: one line that names the file or key and says what to do."""

from __future__ import annotations


class PhotoDetectorError(Exception):
    """An error caused by input the user controls; the CLI prints it without a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self) -> tuple[object, ...]:
        """Keep the hint across a process boundary (the transfer workers raise these)."""
        return self.__class__, (self.message, self.hint)


class ConfigError(PhotoDetectorError):
    """A config key is unknown, mistyped or out of range."""


class DataError(PhotoDetectorError):
    """The dataset folder is missing parts, empty or holds undecodable files."""


class OutputExistsError(PhotoDetectorError):
    """An output folder already holds results and neither --force nor --resume was given."""
