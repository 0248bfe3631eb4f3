"""Fixtures and helpers for the data tests (imported explicitly by tests/data/test_*.py)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raybench.data.synth import synthesize

ALL_FORMATS = ("severstal", "rubber_rings", "rareplanes", "gdxray", "coco", "mask_folder")


@pytest.fixture(scope="session")
def synth_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny synthetic copy of every format (64 px, 10 images), shared by the session."""
    base = tmp_path_factory.mktemp("synth")
    return {name: synthesize(name, base / name, images=10, size=64, seed=0) for name in ALL_FORMATS}


def write_image(path: Path, width: int, height: int, gray: bool = False, value: int | None = None) -> Path:
    """A small noise (or constant) image in the format given by the suffix."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    shape = (height, width) if gray else (height, width, 3)
    arr = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(path)
    return path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range ``Range: bytes=N-`` support; records every request."""

    requests: list[dict[str, str]] = []
    fail_after: int | None = None  # send only this many bytes of a 200 reply (simulated drop)
    extra_headers: dict[str, str] = {}  # sent with every file reply (e.g. S3's ETag)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append({"path": self.path, "range": self.headers.get("Range", "")})
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in type(self).extra_headers.items():
            self.send_header(key, value)
        self.end_headers()
        limit = type(self).fail_after
        self.wfile.write(body if limit is None else body[:limit])


@contextmanager
def serve_directory(directory: Path) -> Iterator[tuple[str, type[RangeHandler]]]:
    """Serve ``directory`` on 127.0.0.1 (random port) in a thread; yields (base_url, handler)."""
    handler = type("Handler", (RangeHandler,), {"requests": [], "fail_after": None, "extra_headers": {}})

    def factory(*args: object, **kwargs: object) -> RangeHandler:
        return handler(*args, directory=str(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
