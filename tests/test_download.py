"""fetch() against a local faulty HTTP server; safe_extract() against hostile and broken tars."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time

import numpy as np
import pytest
from voc_archives import FaultyServer, tar_with

from wsss_core.data.download import ArchiveError, DownloadError, UnsafeArchiveError, fetch, md5sum, safe_extract

PAYLOAD = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with FaultyServer({"/file.bin": PAYLOAD}) as srv:
        yield srv


def quiet_fetch(url, dest, md5=PAYLOAD_MD5, **kw):
    logs: list[str] = []
    kw.setdefault("backoff_s", 0.0)
    return fetch(url, dest, md5, log=logs.append, **kw), logs


def test_md5sum(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert md5sum(tmp_path / "f") == PAYLOAD_MD5


def test_plain_download(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    path, logs = quiet_fetch(server.url("/file.bin"), dest)
    assert path == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    assert [r.range for r in server.requests] == [None]
    progress = [ln for ln in logs if "%" in ln]
    assert progress and len(progress) <= 21 and progress[-1].endswith("(100%)")


def test_existing_good_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    quiet_fetch(server.url("/file.bin"), dest)
    assert server.requests == []


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.drop_after, server.drop_requests = 70_000, 2
    sleeps: list[float] = []
    dest = tmp_path / "file.bin"
    fetch(server.url("/file.bin"), dest, PAYLOAD_MD5, backoff_s=0.5, log=lambda m: None, sleep=sleeps.append)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.requests] == [None, "bytes=70000-", "bytes=140000-"]
    assert sleeps == [0.5, 1.0]  # exponential backoff, injected so the test does not wait


def test_existing_partial_file_is_resumed(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:12345])
    _, logs = quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.requests] == ["bytes=12345-"]
    assert any("resuming" in ln for ln in logs)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:5000])
    _, logs = quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD  # not the first 5000 bytes twice
    assert server.requests[0].range == "bytes=5000-"
    assert any("ignored the Range" in ln for ln in logs)


def test_partial_content_from_the_wrong_offset_is_discarded(server, tmp_path):
    server.wrong_range = True
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:5000])
    quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.requests] == ["bytes=5000-", None]


def test_complete_partial_file_answered_416(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_stale_partial_of_wrong_content_is_discarded(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * len(PAYLOAD))  # full length but garbage -> 416
    quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD
    assert [r.range for r in server.requests] == [f"bytes={len(PAYLOAD)}-", None]


def test_md5_mismatch_raises_and_leaves_nothing(server, tmp_path):
    server.corrupt = True
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as info:
        quiet_fetch(server.url("/file.bin"), dest, retries=3)
    corrupted = bytearray(PAYLOAD)
    corrupted[len(PAYLOAD) // 2] ^= 0xFF  # what the server serves
    actual = hashlib.md5(corrupted).hexdigest()
    message = str(info.value)
    for part in ("file.bin", server.url("/file.bin"), PAYLOAD_MD5, actual):
        assert part in message
    assert isinstance(info.value, RuntimeError) and info.value.actual_md5 == actual
    assert len(server.requests) == 3
    assert os.listdir(tmp_path) == []


def test_wrong_existing_file_is_replaced(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old")
    quiet_fetch(server.url("/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD


def test_missing_file_fails_fast_with_url(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        quiet_fetch(server.url("/nope.bin"), tmp_path / "nope.bin", retries=5)
    assert server.url("/nope.bin") in str(info.value) and "unknown" in str(info.value)
    assert len(server.requests) == 1  # a 404 is not retried


def test_unreachable_server_retries_then_raises(tmp_path):
    with FaultyServer({}) as srv:
        url = srv.url("/file.bin")
    with pytest.raises(DownloadError, match="after 2 attempt"):
        quiet_fetch(url, tmp_path / "file.bin", retries=2, timeout_s=2)


# --------------------------------------------------- sha256 prefix (torch hub names)
def test_sha256_prefix_alone_verifies_the_download(server, tmp_path):
    dest = tmp_path / "file.bin"
    _, logs = quiet_fetch(server.url("/file.bin"), dest, md5=None, sha256_prefix=PAYLOAD_SHA256[:8].upper())
    assert dest.read_bytes() == PAYLOAD and any("sha256 ok" in ln for ln in logs)


def test_sha256_prefix_mismatch_raises_and_leaves_nothing(server, tmp_path):
    server.corrupt = True
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError) as info:
        quiet_fetch(server.url("/file.bin"), dest, md5=None, sha256_prefix=PAYLOAD_SHA256[:8], retries=2)
    corrupted = bytearray(PAYLOAD)
    corrupted[len(PAYLOAD) // 2] ^= 0xFF
    actual = hashlib.sha256(corrupted).hexdigest()
    assert PAYLOAD_SHA256[:8] in str(info.value) and actual in str(info.value)
    assert info.value.actual_sha256 == actual and info.value.expected_md5 is None
    assert len(server.requests) == 2 and os.listdir(tmp_path) == []


def test_md5_and_sha256_must_both_match(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256"):
        quiet_fetch(server.url("/file.bin"), tmp_path / "file.bin", sha256_prefix="00000000", retries=1)


def test_existing_file_with_wrong_sha256_is_replaced(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old")
    quiet_fetch(server.url("/file.bin"), dest, md5=None, sha256_prefix=PAYLOAD_SHA256[:8])
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_fetch_refuses_to_download_unverified(server, tmp_path):
    with pytest.raises(ValueError, match="md5 or sha256_prefix"):
        quiet_fetch(server.url("/file.bin"), tmp_path / "file.bin", md5=None)
    assert server.requests == []


# ----------------------------------------------------------------- safe_extract
def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def _good_tar(tmp_path, name="good.tar.gz"):
    src = tmp_path / "src" / "top"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    (src / "big.bin").write_bytes(PAYLOAD)
    (src / "link").symlink_to("sub/a.txt")  # a link inside the tree is fine
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz" if name.endswith("gz") else "w") as tar:
        tar.add(src, arcname="top")
    return archive


def test_safe_extract_good_archive(tmp_path):
    dest = safe_extract(_good_tar(tmp_path), tmp_path / "out", log=lambda m: None)
    assert (dest / "top" / "sub" / "a.txt").read_text() == "hello"
    assert (dest / "top" / "link").read_text() == "hello"
    assert (dest / "top" / "big.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "member",
    [
        _info("../evil.txt"),
        _info("ok/../../evil.txt"),
        _info("/ABSOLUTE/evil.txt"),
        _info("etc_link", tarfile.SYMTYPE, "/etc"),
        _info("sub/up", tarfile.SYMTYPE, "../../.."),
        _info("hard", tarfile.LNKTYPE, "../evil.txt"),
        _info("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-etc", "symlink-up", "hardlink-out", "chardev"],
)
def test_safe_extract_refuses_unsafe_member(tmp_path, member):
    if member.name.startswith("/ABSOLUTE"):
        member.name = str(tmp_path / "evil.txt")
    data = b"evil" if member.isreg() else None
    archive = tar_with(tmp_path / "bad.tar", [(_info("fine.txt"), b"fine"), (member, data)])
    dest = tmp_path / "a" / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest, log=lambda m: None)
    assert str(archive) in str(info.value) and repr(member.name) in str(info.value)
    assert os.listdir(tmp_path) == ["bad.tar"]  # nothing outside, nothing at dest, no temp folder


def test_safe_extract_data_filter_catches_what_path_checks_cannot(tmp_path):
    """Links that look inside lexically but escape once earlier links resolve: the data filter stops them."""
    directory = _info("deep", tarfile.DIRTYPE), _info("deep/deeper", tarfile.DIRTYPE)
    members = [(directory[0], None), (directory[1], None)]
    members += [(_info("deep/deeper/s", tarfile.SYMTYPE, "../.."), None)]  # -> the extraction root
    members += [(_info("deep/deeper/s/t", tarfile.SYMTYPE, "../x"), None)]  # really -> outside it
    members += [(_info("deep/deeper/s/t/evil.txt"), b"evil")]
    archive = tar_with(tmp_path / "chain.tar", members)
    with pytest.raises(UnsafeArchiveError, match="outside the destination"):
        safe_extract(archive, tmp_path / "a" / "out", log=lambda m: None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "chain.tar"]


@pytest.mark.parametrize("name,cut", [("t.tar", 0.6), ("t.tar", 1.0), ("t.tar.gz", 0.6)])
def test_safe_extract_truncated_archive(tmp_path, name, cut):
    archive = _good_tar(tmp_path, name)
    data = archive.read_bytes()
    if cut == 1.0:  # cut exactly after the last member: only the end marker is missing
        with tarfile.open(archive) as tar:
            tar.getmembers()
            data = data[: tar.offset]
    else:
        data = data[: int(len(data) * cut)]
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match="truncated") as info:
        safe_extract(archive, tmp_path / "out", log=lambda m: None)
    assert str(archive) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == sorted(["src", name])  # no dest, no temp folder


def test_safe_extract_not_an_archive(tmp_path):
    archive = tmp_path / "junk.tgz"
    archive.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ArchiveError, match="junk.tgz"):
        safe_extract(archive, tmp_path / "out", log=lambda m: None)
    assert os.listdir(tmp_path) == ["junk.tgz"]


def test_deadline_stops_a_server_that_trickles(server, tmp_path):
    server.trickle = (2_000, 0.05)  # 40 kB/s: every read gets bytes, so no read times out; 300 kB take 7.5 s
    dest = tmp_path / "file.bin"
    url = server.url("/file.bin")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        quiet_fetch(url, dest, timeout_s=60, deadline_s=1, deadline_name="config key voc12.deadline_s")
    assert time.monotonic() - start < 4
    part = tmp_path / "file.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not dest.exists()  # the bytes so far stay for a rerun
    message = str(info.value)
    assert message.startswith(
        f"download of {url} exceeded the deadline of 1 s (config key voc12.deadline_s) " f"after {kept} bytes"
    )
    assert str(part) in message and len(server.requests) == 1
    server.trickle = None  # the rerun resumes where the deadline stopped the first
    quiet_fetch(url, dest)
    assert dest.read_bytes() == PAYLOAD and server.requests[-1].range == f"bytes={kept}-"


def test_deadline_is_checked_before_waiting_to_retry(server, tmp_path):
    server.drop_after, server.drop_requests = 70_000, 99
    sleeps: list[float] = []
    expected = r"exceeded the deadline of 30 s after 70000 bytes .*; the attempt before failed: _ShortRead"
    with pytest.raises(DownloadError, match=expected) as info:
        fetch(
            server.url("/file.bin"),
            tmp_path / "file.bin",
            PAYLOAD_MD5,
            backoff_s=60,
            deadline_s=30,
            log=lambda m: None,
            sleep=sleeps.append,
        )
    assert sleeps == [] and len(server.requests) == 1  # a 60 s wait would end past the deadline: none started
    assert server.url("/file.bin") in str(info.value)


def test_short_download_without_content_length_says_so(server, tmp_path):
    server.no_length = True
    quiet_fetch(server.url("/file.bin"), tmp_path / "whole.bin")  # no size, but every byte: fine
    server.drop_after, server.drop_requests = 100_000, 99
    with pytest.raises(DownloadError) as info:
        quiet_fetch(server.url("/file.bin"), tmp_path / "file.bin", retries=2)
    assert (
        "got 100000 bytes and the server sent no Content-Length, so a connection that closed early leaves a "
        "short file" in str(info.value)
    )
    assert (tmp_path / "whole.bin").read_bytes() == PAYLOAD and not (tmp_path / "file.bin").exists()
