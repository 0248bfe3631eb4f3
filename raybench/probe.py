"""Probe a place before writing there for real: a write + read back + delete of a small file.

Permission bits and ``os.access`` do not tell whether a write will work (root ignores them;
a read-only mount, a path below a regular file or an object store without credentials do not
show in them), and the failure would otherwise come late: after Ray started, after the data
and model were built.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

from raybench.errors import StorageError, UserInputError
from raybench.storage import is_uri, resolve

#: How long the storage probe waits for an answer (an unreachable endpoint, a hanging mount).
PROBE_TIMEOUT_S = 60.0


def probe_folder(folder: Path, error: type[UserInputError] = StorageError, what: str = "storage") -> None:
    """Create ``folder`` if needed, write + read back + delete a probe file; on failure remove
    the folders it created and raise ``error`` naming ``what`` and the folder.

    Why a real write: permission bits do not tell (root ignores them; a read-only mount,
    a full disk or a path below a regular file do not show in them)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    first_new = None if existing == folder else folder.relative_to(existing).parts[0]
    probe = folder / f".raybench-probe-{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"raybench storage probe\n")
        if probe.read_bytes() != b"raybench storage probe\n":
            raise OSError(f"{probe} reads back different bytes")
        probe.unlink()
    except OSError as exc:
        if probe.parent.is_dir():
            probe.unlink(missing_ok=True)
        if first_new is not None:
            shutil.rmtree(existing / first_new, ignore_errors=True)
        raise error(f"{what} {folder} is not writable: {exc.strerror or exc}") from None


def _probe_remote(location: str) -> None:
    fs, path = resolve(location)
    probe = f"{path}/.raybench-probe-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(probe) as f:
        f.write(b"raybench storage probe\n")
    with fs.open_input_stream(probe) as f:
        if f.read() != b"raybench storage probe\n":
            raise OSError(f"{location}: the probe object reads back different bytes")
    fs.delete_file(probe)


def check_storage(location: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Write, read back and delete a small probe object under ``location`` (a local folder,
    created if missing, or a ``s3://`` / ``gs://`` URI); :class:`StorageError` naming it if any
    step fails or takes longer than ``timeout_s``.

    Why: Ray finds a read-only folder or an unreachable bucket only after it has started, as
    a pyarrow traceback from inside Tune; checked first, the sweep fails in a second instead.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            if is_uri(location):
                _probe_remote(location)
            else:
                probe_folder(Path(location))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=run, name="raybench-storage-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise StorageError(
            f"storage {location} did not answer within {timeout_s:g} s (unreachable endpoint or "
            "hanging mount?); check the URI, AWS_ENDPOINT_URL / credentials and the network"
        )
    if errors:
        exc = errors[0]
        if isinstance(exc, StorageError):
            raise exc
        raise StorageError(
            f"storage {location} cannot be written and read back: {type(exc).__name__}: {exc}; "
            "check the URI, the credentials (AWS_* / GOOGLE_*) and the endpoint (AWS_ENDPOINT_URL)"
        ) from None
