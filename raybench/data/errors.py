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
