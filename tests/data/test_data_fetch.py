"""Downloads against a local HTTP server (127.0.0.1 only): resume, verification, layout."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from raybench.data import DownloadError, build_dataset
from raybench.data.cli import add_data_commands
from raybench.data.fetch import ManualDownloadRequired, download, fetch
from raybench.data.synth import synthesize
from tests.helpers.data_fixtures import serve_directory

pytestmark = pytest.mark.filterwarnings("ignore:gdxray.*has no such folder:UserWarning")


@pytest.fixture
def blob(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (served / "blob.bin").write_bytes(data)
    return served, data, hashlib.sha256(data).hexdigest()


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_resume_partial_file_with_range(blob, tmp_path) -> None:
    served, data, sha = blob
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(data[:100_000])
    with serve_directory(served) as (url, handler):
        download(f"{url}/blob.bin", dest, size=len(data), sha256=sha, progress=False)
        assert handler.requests == [{"path": "/blob.bin", "range": "bytes=100000-"}]
        download(f"{url}/blob.bin", dest, size=len(data), sha256=sha, progress=False)
        assert len(handler.requests) == 1  # verified file kept, no second request
    assert dest.read_bytes() == data and not (dest.parent / "blob.bin.part").exists()


def test_dropped_connection_then_resume(blob, tmp_path) -> None:
    served, data, sha = blob
    dest = tmp_path / "blob.bin"
    with serve_directory(served) as (url, handler):
        handler.fail_after = 50_000
        with pytest.raises(
            DownloadError, match=r"size mismatch, expected 300000 bytes, got 50000; run again to resume"
        ):
            download(f"{url}/blob.bin", dest, sha256=sha, progress=False, timeout=5)
        handler.fail_after = None
        download(f"{url}/blob.bin", dest, sha256=sha, progress=False)
        assert handler.requests[-1]["range"] == "bytes=50000-"
    assert dest.read_bytes() == data


def test_checksum_and_size_mismatch(blob, tmp_path) -> None:
    served, data, _ = blob
    dest = tmp_path / "blob.bin"
    with serve_directory(served) as (url, _):
        with pytest.raises(
            DownloadError,
            match=r"checksum mismatch, expected sha256 0{64}, got [0-9a-f]{64}; the file was removed",
        ):
            download(f"{url}/blob.bin", dest, sha256="0" * 64, progress=False)
        assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()
        with pytest.raises(
            DownloadError,
            match=rf"size mismatch, expected {len(data) + 10} bytes, got {len(data)}; run again to resume",
        ):
            download(f"{url}/blob.bin", dest, size=len(data) + 10, progress=False)
        with pytest.raises(DownloadError, match=r"missing.bin: HTTP 404"):
            download(f"{url}/missing.bin", dest, progress=False)


def test_fetch_rareplanes_layout_from_bucket_keys(tmp_path) -> None:
    src = synthesize("rareplanes", tmp_path / "src", images=6, size=32, seed=0)
    bucket = tmp_path / "bucket"
    shutil.copytree(src / "real" / "metadata_annotations", bucket / "real" / "metadata_annotations")
    for split in ("train", "test"):
        archive = bucket / "real" / "tarballs" / split / f"RarePlanes_{split}_PS-RGB_tiled.tar.gz"
        archive.parent.mkdir(parents=True)
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src / "real" / split / "PS-RGB_tiled", arcname="PS-RGB_tiled")
    dest = tmp_path / "dest"
    with serve_directory(bucket) as (url, handler):
        paths = fetch("rareplanes", dest, base_url=url, progress=False)
        assert len(paths) == 4 and len(handler.requests) == 4
        fetch("rareplanes", dest, base_url=url, progress=False)
        assert len(handler.requests) == 4  # everything already there
        shutil.rmtree(dest / "downloads")  # archives gone, tiles unpacked: still nothing to get
        fetch("rareplanes", dest, base_url=url, progress=False)
        assert len(handler.requests) == 4
    for split in ("train", "val"):
        n = len(build_dataset("rareplanes", src, split, unmapped="skip"))  # synth holds military roles
        assert len(build_dataset("rareplanes", dest, split, unmapped="skip")) == n


def test_fetch_gdxray_zip_nested_layout_and_env_override(tmp_path, monkeypatch, capsys) -> None:
    src = synthesize("gdxray", tmp_path / "src", images=6, size=32, seed=0)
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "Castings.zip", "w") as zf:
        for p in (src / "Castings").rglob("*"):
            zf.write(p, f"GDXray/Castings/{p.relative_to(src / 'Castings')}")
    dest = tmp_path / "dest"
    with serve_directory(site) as (url, _):
        monkeypatch.setenv("RAYBENCH_GDXRAY_URL", url)
        assert _run(["data", "fetch", "gdxray", str(dest), "--quiet"]) == 0
    assert "next: raybench data check gdxray" in capsys.readouterr().out
    assert sorted(p.name for p in (dest / "Castings").iterdir()) == sorted(
        p.name for p in (src / "Castings").iterdir()
    )
    assert len(build_dataset("gdxray", dest, "train")) == len(build_dataset("gdxray", src, "train"))


def test_manual_datasets_print_exact_steps(tmp_path, capsys) -> None:
    assert _run(["data", "fetch", "severstal", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"kaggle competitions download -c severstal-steel-defect-detection -p {tmp_path}" in out
    assert "~/.kaggle/kaggle.json" in out
    with pytest.raises(
        ManualDownloadRequired, match=r"drive.google.com/file/d/1aBI6cGRxjzgk02VFYSIGbNm2X_FqFqno"
    ):
        fetch("rubber_rings", tmp_path)
    with pytest.raises(ValueError, match=r"nothing to fetch for 'coco'"):
        fetch("coco", tmp_path)


def test_s3_etag_md5_is_verified(blob, tmp_path) -> None:
    """RarePlanes comes from S3, whose single-part ETag is the object's MD5: checked even though
    the manifest pins no checksum; other servers' ETags are opaque and ignored."""
    served, data, _ = blob
    md5 = hashlib.md5(data).hexdigest()
    with serve_directory(served) as (url, handler):
        handler.extra_headers = {"ETag": f'"{md5}"', "x-amz-request-id": "T1"}
        (tmp_path / "a.bin.part").write_bytes(data[:1000])  # resumed: the MD5 covers the whole file
        download(f"{url}/blob.bin", tmp_path / "a.bin", progress=False)
        assert handler.requests[-1]["range"] == "bytes=1000-"
        assert (tmp_path / "a.bin").read_bytes() == data
        handler.extra_headers = {"ETag": '"' + "0" * 32 + '"', "x-amz-request-id": "T2"}
        with pytest.raises(
            DownloadError,
            match=rf"checksum mismatch, expected md5 0{{32}} \(the S3 ETag\), got {md5}; the file was",
        ):
            download(f"{url}/blob.bin", tmp_path / "b.bin", progress=False)
        assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
        handler.extra_headers = {"ETag": '"' + "0" * 32 + '"'}  # not S3: an opaque tag
        download(f"{url}/blob.bin", tmp_path / "c.bin", progress=False)
        handler.extra_headers = {"ETag": '"' + "0" * 32 + '-3"', "x-amz-request-id": "T3"}  # multipart
        download(f"{url}/blob.bin", tmp_path / "d.bin", progress=False)
    assert (tmp_path / "c.bin").read_bytes() == data == (tmp_path / "d.bin").read_bytes()
