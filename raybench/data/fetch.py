"""``raybench data fetch``: download public datasets (resumable, verified) or explain manual steps.

RarePlanes (public S3 bucket, HTTPS endpoint) and GDXray Castings (the authors' site) are
downloaded with a progress bar; an interrupted file is kept as ``<name>.part`` and resumed
with an HTTP ``Range`` request; the result is checked against the manifest's size/SHA-256
(where the manifest has none: the server's ``Content-Length``, and on S3 -- RarePlanes -- the
object's MD5 from its ETag) before it is renamed and
unpacked into the loader's layout. Severstal (Kaggle login) and Rubber Rings (Google
Drive) need manual steps: :func:`fetch` raises :class:`ManualDownloadRequired` with them.

Base URLs can be overridden per source (``RAYBENCH_RAREPLANES_URL``,
``RAYBENCH_GDXRAY_URL``) or per call (``base_url=``), e.g. for a mirror or a test server.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from tqdm import tqdm

from raybench.data.errors import DownloadError

CHUNK = 1 << 20
USER_AGENT = "raybench-data-fetch/0.1"

log = logging.getLogger(__name__)


class ManualDownloadRequired(DownloadError):
    """The dataset needs credentials or a browser; the message has the exact steps."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: ``key`` under the base URL, stored at ``dest`` under DEST.

    Archives name ``extract_to`` (a folder under DEST) and ``marker``, a glob matched by
    the entries the target folder must hold directly (``*.png``; ``C[0-9]*`` series); the
    archive's folder with most such entries is moved there, whatever its path inside.
    """

    key: str
    dest: str
    size: int | None = None
    sha256: str | None = None
    extract_to: str | None = None
    marker: str | None = None


@dataclass(frozen=True)
class Source:
    name: str
    base_url: str
    env_var: str
    files: tuple[RemoteFile, ...]
    about: str = ""


# Sizes/checksums are not pinned (no network here to measure them); until they are, the
# server's Content-Length is verified. Fill them in from a first download to pin them.
SOURCES: dict[str, Source] = {
    "rareplanes": Source(
        name="rareplanes",
        base_url="https://rareplanes-public.s3.amazonaws.com",
        env_var="RAYBENCH_RAREPLANES_URL",
        about="RarePlanes real imagery: 512x512 tiles + tiled COCO JSON (s3://rareplanes-public)",
        files=(
            RemoteFile(
                "real/metadata_annotations/RarePlanes_Train_Coco_Annotations_tiled.json",
                "real/metadata_annotations/RarePlanes_Train_Coco_Annotations_tiled.json",
            ),
            RemoteFile(
                "real/metadata_annotations/RarePlanes_Test_Coco_Annotations_tiled.json",
                "real/metadata_annotations/RarePlanes_Test_Coco_Annotations_tiled.json",
            ),
            RemoteFile(
                "real/tarballs/train/RarePlanes_train_PS-RGB_tiled.tar.gz",
                "downloads/RarePlanes_train_PS-RGB_tiled.tar.gz",
                extract_to="real/train/PS-RGB_tiled",
                marker="*.png",
            ),
            RemoteFile(
                "real/tarballs/test/RarePlanes_test_PS-RGB_tiled.tar.gz",
                "downloads/RarePlanes_test_PS-RGB_tiled.tar.gz",
                extract_to="real/test/PS-RGB_tiled",
                marker="*.png",
            ),
        ),
    ),
    "gdxray": Source(
        name="gdxray",
        base_url="http://dmery.sitios.ing.uc.cl/images/GDXray",
        env_var="RAYBENCH_GDXRAY_URL",
        about="GDXray Castings (D. Mery; https://domingomery.ing.puc.cl/material/gdxray/, ~314 MB)",
        files=(
            RemoteFile(
                "Castings.zip",
                "downloads/Castings.zip",
                extract_to="Castings",
                marker="C[0-9][0-9][0-9][0-9]",
            ),
        ),
    ),
}

MANUAL: dict[str, str] = {
    "severstal": """\
Severstal is a Kaggle competition dataset: it needs a Kaggle account that has accepted the rules.
  1. Accept the rules: https://www.kaggle.com/c/severstal-steel-defect-detection/rules
  2. Create an API token (Kaggle > Settings > API > Create New Token) and save it as
     ~/.kaggle/kaggle.json (chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY.
  3. pip install kaggle
  4. kaggle competitions download -c severstal-steel-defect-detection -p {dest}
  5. cd {dest} && unzip -q severstal-steel-defect-detection.zip
     (gives train.csv, train_images/*.jpg, test_images/, sample_submission.csv)
  6. raybench data check severstal {dest}""",
    "rubber_rings": """\
Rubber Rings (Liu et al. 2025) is shared by the authors on Google Drive (link in the README of
https://github.com/liutongkun/GFDS); it cannot be fetched without a browser session.
  1. Open https://drive.google.com/file/d/1aBI6cGRxjzgk02VFYSIGbNm2X_FqFqno/view and download it
     (or: pip install gdown && gdown 1aBI6cGRxjzgk02VFYSIGbNm2X_FqFqno -O {dest}/rubber_rings.zip)
  2. Unpack it so that {dest} directly contains Large/, Small/ and Side/, each with
     images/<defect>/ and ground_truth/<defect>/ (move the folders up if the archive nests them).
  3. raybench data check rubber_rings {dest}""",
}


def instructions(name: str, dest: str | Path = "DEST") -> str | None:
    """Manual download steps for ``name`` (None when it can be fetched automatically)."""
    text = MANUAL.get(name)
    return None if text is None else text.format(dest=dest)


def sha256_file(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')


def s3_md5(headers: Message) -> str | None:
    """The object's MD5 when an S3 server says it: S3's ETag of an object uploaded in one part
    is the MD5 of its bytes (multipart ETags end in ``-N`` and are not). Other servers' ETags
    are opaque version tags, so only replies carrying S3's ``x-amz-request-id`` count."""
    if not headers.get("x-amz-request-id"):
        return None
    match = _MD5_ETAG.match((headers.get("ETag") or "").strip().lower())
    return match.group(1) if match else None


def _total_from_headers(resp: urllib.response.addinfourl, offset: int) -> int | None:
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
        try:
            span, total = rng.split(" ", 1)[1].split("/")
            start = int(span.split("-")[0])
        except (IndexError, ValueError):
            raise DownloadError(f"{resp.url}: malformed Content-Range {rng!r}") from None
        if start != offset:
            raise DownloadError(f"{resp.url}: asked to resume at byte {offset}, server sent {start}")
        return None if total == "*" else int(total)
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def download(
    url: str,
    path: Path,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``path``, resuming ``path.part``; verify size and SHA-256.

    A complete file already at ``path`` that passes the checks is kept (no request).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():  # only verified downloads are ever renamed to ``path``
        if (size is None or path.stat().st_size == size) and (sha256 is None or sha256_file(path) == sha256):
            return path
        path.unlink()
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    log.info("downloading %s to %s%s", url, path, f" (resuming at byte {offset})" if offset else "")
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part is complete
            resp, total = None, offset
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    md5 = None
    if resp is not None:
        with resp:
            if offset and resp.status != 206:
                offset = 0  # server ignored Range: start over
            total = _total_from_headers(resp, offset)
            md5 = s3_md5(resp.headers)  # S3 sends the whole object's ETag with a range too
            with (
                part.open("ab" if offset else "wb") as fh,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=path.name,
                    disable=not progress,
                ) as bar,
            ):
                try:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        fh.write(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(
                        f"{url}: connection lost after {part.stat().st_size} bytes ({exc}); "
                        f"run the command again to resume from {part}"
                    ) from None
    got = part.stat().st_size
    expected = size if size is not None else total
    if expected is not None and got != expected:
        if got > expected:
            part.unlink()
        raise DownloadError(
            f"{url}: size mismatch, expected {expected} bytes, got {got}"
            + ("; run again to resume" if got < expected else "; the file was removed")
        )
    if sha256 is not None:
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise DownloadError(
                f"{url}: checksum mismatch, expected sha256 {sha256}, got {digest}; the file was removed"
            )
    if md5 is not None and sha256 is None:
        digest = sha256_file(part, "md5")
        if digest != md5:
            part.unlink()
            raise DownloadError(
                f"{url}: checksum mismatch, expected md5 {md5} (the S3 ETag), got {digest}; "
                "the file was removed"
            )
    part.replace(path)
    return path


def _extract(archive: Path, dest: Path, target: str, marker: str) -> Path:
    """Unpack ``archive`` and move the folder holding most ``marker`` entries to ``dest/target``."""
    final = dest / target
    if final.is_dir() and any(final.glob(marker)):
        return final  # already unpacked
    log.info("unpacking %s into %s", archive, final)
    tmp = dest / f".extract-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"cannot unpack {archive}: {exc}") from None
    best, best_n = None, 0
    for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        n = sum(1 for _ in folder.glob(marker))
        if n > best_n:
            best, best_n = folder, n
    if best is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{archive}: no entries matching {marker!r} inside; unexpected archive layout")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    shutil.move(str(best), str(final))
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch(
    name: str,
    dest: str | Path,
    base_url: str | None = None,
    progress: bool = True,
    extract: bool = True,
) -> list[Path]:
    """Download dataset ``name`` into ``dest`` in the layout its loader reads.

    Raises :class:`ManualDownloadRequired` (message = steps) for Severstal / Rubber Rings
    and :class:`DownloadError` for network, size or checksum failures.
    """
    dest = Path(dest)
    text = instructions(name, dest)
    if text is not None:
        raise ManualDownloadRequired(text)
    if name not in SOURCES:
        known = ", ".join(sorted([*SOURCES, *MANUAL]))
        raise ValueError(
            f"nothing to fetch for {name!r} (user data formats are brought by the user); known: {known}"
        )
    source = SOURCES[name]
    base = (base_url or os.environ.get(source.env_var) or source.base_url).rstrip("/")
    out: list[Path] = []
    for f in source.files:
        if extract and f.extract_to is not None:
            done = dest / f.extract_to
            if done.is_dir() and any(done.glob(f.marker or "*")):
                out.append(done)  # unpacked earlier (the archive may be gone)
                continue
        local = download(f"{base}/{f.key}", dest / f.dest, f.size, f.sha256, progress=progress)
        if extract and f.extract_to is not None:
            out.append(_extract(local, dest, f.extract_to, f.marker or "*"))
        else:
            out.append(local)
    return out
