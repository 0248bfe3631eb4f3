"""Errors raised by the data layer.

One exception type for "the files on disk are not what the format promises", so callers
(``raybench data check``, the engine) can tell bad data apart from bugs in raybench.
"""

from __future__ import annotations


class DatasetFormatError(ValueError):
    """A dataset on disk does not follow its format; the message names the file (and row/key)."""


class DownloadError(RuntimeError):
    """A download failed or its result does not match the manifest (size / checksum)."""


class DatasetOptionError(ValueError):
    """A dataset option has a value the loader cannot use.

    ``option`` names the option (its key under ``datasets[i].options`` in a study), so the
    study checks can point at the exact YAML key and line instead of the whole dataset.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"option {option}: {message}")
        self.option = option
        self.detail = message


class DatasetDataOptionError(DatasetFormatError, DatasetOptionError):
    """The data on disk and an option disagree (``val_series`` names no series on disk, a
    class value is outside ``class_map``, a policy leaves a split empty).

    Both kinds at once: a :class:`DatasetFormatError` (it is found by reading the data) that
    also names the option to change (``.option``), so a study can point at that YAML key.
    ``census`` optionally carries counts the error was computed from (e.g. every value of
    RarePlanes' class attribute), so ``data check`` can still print them.
    """

    def __init__(self, option: str, message: str, census: dict | None = None) -> None:
        DatasetOptionError.__init__(self, option, message)
        self.census = census


class DatasetRootError(DatasetFormatError):
    """The dataset root itself is unusable: missing, a file, or an empty folder.

    ``key`` is ``"root"`` (the study key ``datasets[i].root``), not an option.
    """

    key = "root"
