"""Unit tests of the result-image copier (``worker/storage``) into the local store: paths never
come from raw input. Downloads go through an ``httpx.MockTransport``: no network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from worker.storage import (
    MAX_IMAGE_BYTES,
    LocalStore,
    StorageError,
    copy_image,
    image_key,
    job_prefix,
    sniff,
)

URL = "https://file.modellix.test/aigc/image/abc.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def store_image(
    http: httpx.Client, root: Path, job_id: str, index: int, url: str, fmt: str
) -> Path:
    copy = copy_image(http, LocalStore(root), job_id, index, url, fmt)
    assert copy.path is not None
    return copy.path


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_prefix(job_id)


def image_path(root: Path, job_id: str, index: int, fmt: str) -> Path:
    return LocalStore(root).path(image_key(job_id, index, fmt))


def downloads(content: bytes = PNG, status: int = 200) -> tuple[httpx.Client, list[str]]:
    seen: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(status, content=content)

    return httpx.Client(transport=httpx.MockTransport(respond)), seen


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


HOSTILE_IDS = [
    "..",
    "../x",
    "../../etc/passwd",
    "/abs",
    "/abs/../..",
    ".",
    "",
    "coll_X",
    "coll/X",
    "coll\\X",
    "coll%2FX",
    "COLL_X",
    "~",
    "a" * 64,
    "ジョブ-é-🙂-\u202e-\u200b",
    "lone-\ud800-surrogate",
    "line\nbreak\ttab",
]


def test_hostile_job_ids_land_in_distinct_folders_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    http, _ = downloads()
    paths = [store_image(http, root, job_id, 0, URL, "png") for job_id in HOSTILE_IDS]
    assert len({p.parent for p in paths}) == len(HOSTILE_IDS)
    for path in paths:
        assert inside(path, root)
        assert path.read_bytes() == PNG
        assert path.name == "0.png"
        # <root>/<2 hex>/<62 hex>/<file>
        fanout, rest = path.parent.parent.name, path.parent.name
        assert path.parent.parent.parent == root
        assert len(fanout) == 2
        assert len(rest) == 62
        assert all(c in "0123456789abcdef" for c in fanout + rest)
    # nothing was written next to the root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_job_dir_is_the_sha256_of_the_id(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"coll/X").hexdigest()
    assert job_dir(tmp_path, "coll/X") == tmp_path / digest[:2] / digest[2:]
    assert job_dir(tmp_path, "coll/X") != job_dir(tmp_path, "coll_X")


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("png", "3.png"), ("PNG", "3.png"), ("jpeg", "3.jpeg"), ("jpg", "3.jpg"), ("WebP", "3.webp")],
)
def test_file_name_is_the_index_and_an_allowed_format(tmp_path: Path, fmt: str, name: str) -> None:
    assert image_path(tmp_path, "job-1", 3, fmt).name == name


@pytest.mark.parametrize(
    "fmt", ["exe", "png/../../x", "../png", "", "png\x00", "p.ng", "svg", "png " * 5]
)
def test_format_outside_the_allow_list_is_refused_before_any_download(
    tmp_path: Path, fmt: str
) -> None:
    http, seen = downloads()
    with pytest.raises(StorageError, match="not an image format"):
        store_image(http, tmp_path, "job-1", 0, URL, fmt)
    assert seen == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("index", [-1, 10_000, True])
def test_index_out_of_range_is_refused(tmp_path: Path, index: int) -> None:
    http, seen = downloads()
    with pytest.raises(StorageError, match="not an image index"):
        store_image(http, tmp_path, "job-1", index, URL, "png")
    assert seen == []


def test_symlinked_fanout_leading_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / job_dir(root, "job-1").parent.name).symlink_to(outside)
    http, _ = downloads()
    with pytest.raises(StorageError, match="leaves the storage directory"):
        store_image(http, root, "job-1", 0, URL, "png")
    assert list(outside.iterdir()) == []


def test_copy_again_replaces_the_first_and_reports_what_it_stored(tmp_path: Path) -> None:
    http, seen = downloads()
    store = LocalStore(tmp_path)
    first = copy_image(http, store, "job-1", 1, URL, "webp")
    again = copy_image(http, store, "job-1", 1, URL, "webp")
    assert first == again
    assert seen == [URL, URL]  # a retry downloads again: nothing half-known is trusted
    assert first.path is not None
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["1.webp"]
    assert first.sha256 == hashlib.sha256(PNG).hexdigest()
    assert first.size_bytes == len(PNG)
    assert first.content_type == "image/png"  # from the bytes, not the upstream's word
    assert b"".join(store.open(first.key)) == PNG


def test_bytes_that_are_no_image_are_refused_for_good(tmp_path: Path) -> None:
    http, _ = downloads(content=b"<html>not found</html>")
    with pytest.raises(StorageError, match="not an image") as caught:
        store_image(http, tmp_path, "job-1", 0, URL, "png")
    assert caught.value.permanent


@pytest.mark.parametrize("status", [404, 403, 410, 503, 500, 429])
def test_every_http_answer_is_asked_again(tmp_path: Path, status: int) -> None:
    # A CDN may answer 403/404 for a moment after the task ends; the deadline bounds it.
    http, _ = downloads(status=status)
    with pytest.raises(StorageError) as caught:
        store_image(http, tmp_path, "job-1", 0, URL, "png")
    assert caught.value.permanent is False


def test_copies_are_readable_by_other_users(tmp_path: Path) -> None:
    path = store_image(downloads()[0], tmp_path, "job-1", 0, URL, "png")
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(8), "image/jpeg"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a" + bytes(8), "image/gif"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, media_type: str | None) -> None:
    assert sniff(data) == media_type


def test_a_missing_copy_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such copy"):
        LocalStore(tmp_path).open(image_key("job-1", 0, "png"))


def test_http_error_status_is_a_storage_error_and_leaves_no_file(tmp_path: Path) -> None:
    http, _ = downloads(status=404)
    with pytest.raises(StorageError, match="HTTP 404"):
        store_image(http, tmp_path, "job-1", 0, URL, "png")
    assert not job_dir(tmp_path, "job-1").exists()


def test_oversized_image_is_refused_and_leaves_no_part_file(tmp_path: Path) -> None:
    http, _ = downloads(content=bytes(MAX_IMAGE_BYTES + 1))
    with pytest.raises(StorageError, match="larger than"):
        store_image(http, tmp_path, "job-1", 0, URL, "png")
    assert not job_dir(tmp_path, "job-1").exists()


@pytest.mark.parametrize("url", ["ftp://x.test/a.png", "https://[::1/a.png"])
def test_unusable_url_is_a_storage_error(tmp_path: Path, url: str) -> None:
    http, _ = downloads()
    with pytest.raises(StorageError):
        store_image(http, tmp_path, "job-1", 0, url, "png")
