"""Where raybench reads and writes: a local folder or an ``s3://`` / ``gs://`` URI.

One module for the path and file-system helpers the sweep (Ray's storage, trial folders) and
the results store (Parquet parts, status.json) share, so both resolve a location the same way
(the same S3 endpoint, region and small-object PUTs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://...``, ``gs://...``) rather than a local path."""
    return "://" in path


def join_uri(base: str, *parts: str) -> str:
    """``base`` / ``parts``: ``/``-joined for a URI, a local path otherwise."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def s3_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """S3 file system for ``s3://bucket/path`` and the path inside it.

    Built explicitly rather than by ``FileSystem.from_uri`` for two reasons:
    ``allow_delayed_open`` makes arrow send an object smaller than one part as a single
    ``PutObject`` (idempotent, so a retried request after a timeout is harmless, unlike a
    retried ``CompleteMultipartUpload``), and ``AWS_ENDPOINT_URL[_S3]`` (MinIO, moto) is
    honoured even by pyarrow releases that ignore it.
    """
    parsed = urlparse(uri)
    bucket = parsed.netloc
    kwargs: dict[str, Any] = {"allow_delayed_open": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
        region = region or "us-east-1"
    elif not region:
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None  # arrow's default; the first request then names the problem
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), f"{bucket}{parsed.path}".rstrip("/")


def resolve(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or a ``s3://`` / ``gs://`` URI."""
    root = str(root)
    if is_uri(root):
        if root.startswith("s3://"):
            return s3_filesystem(root)
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())


def ray_storage(root: str) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray's ``RunConfig`` and ``Tuner.restore``:
    on S3 Ray then writes with the same file system (and the same small-object PUTs) as the
    results store; elsewhere Ray resolves the path itself."""
    if root.startswith("s3://"):
        fs, path = s3_filesystem(root)
        return path, fs
    return root, None


__all__ = ["is_uri", "join_uri", "ray_storage", "resolve", "s3_filesystem"]
