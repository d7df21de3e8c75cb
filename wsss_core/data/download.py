"""Fetch and unpack the public archives (VOC 2012, SBD) without trusting the network.

The archives are gigabytes on slow academic servers, so :func:`fetch` resumes a
partial ``.part`` file with an HTTP Range request, retries with backoff, gives up at an
optional wall-clock deadline (a server that trickles bytes never trips the per-read
timeout), and only renames the file into place once its checksum matches: an md5 (the datasets publish
md5s) and/or a sha256 prefix (PyTorch checkpoints such as ``resnet50-0676ba61.pth``
carry the first hex digits of their sha256 in the file name). :func:`safe_extract`
vets every member before anything is written and unpacks into a temporary folder
that replaces ``dest_dir`` only on success, so a crash or a hostile archive never
leaves a tree that a later stage could take for a finished extraction.
Standard library only: this runs before any environment is trusted.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import lzma
import os
import posixpath
import re
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from wsss_core.fileio import atomic_dir

CHUNK = 1 << 20
PROGRESS_STEP = 0.05  # log a progress line every 5% of the file
UNKNOWN_SIZE_STEP = 100 << 20  # ... or every 100 MiB when the server sends no size
# Client errors that no retry will fix (408 timeout and 429 rate limit are worth a retry).
_PERMANENT_HTTP = set(range(400, 500)) - {408, 416, 429}


class DownloadError(RuntimeError):
    """A download that did not produce the expected bytes after every retry."""

    def __init__(
        self,
        message: str,
        url: str,
        dest: Path,
        expected_md5: str | None,
        actual_md5: str | None,
        expected_sha256_prefix: str | None = None,
        actual_sha256: str | None = None,
    ):
        super().__init__(message)
        self.url, self.dest = url, dest
        self.expected_md5, self.actual_md5 = expected_md5, actual_md5
        self.expected_sha256_prefix, self.actual_sha256 = expected_sha256_prefix, actual_sha256


class ArchiveError(RuntimeError):
    """An archive that cannot be read (corrupt, truncated, not a tar)."""


class UnsafeArchiveError(ArchiveError):
    """An archive with a member that would write outside the extraction folder."""


class _ShortRead(OSError):
    """The connection closed before the announced number of bytes arrived."""


class _DeadlinePassed(Exception):
    """The wall-clock deadline of a fetch passed (not an OSError: no retry)."""


def _hexdigests(path: str | os.PathLike, algorithms: list[str]) -> dict[str, str]:
    """Hex digests of a file in one pass of 1 MiB chunks, so multi-GB archives need no memory."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file."""
    return _hexdigests(path, ["md5"])["md5"]


def _verify(path: Path, md5: str | None, sha256_prefix: str | None) -> tuple[dict[str, str], str | None]:
    """The requested digests of ``path`` and a description of the first mismatch (None: all match)."""
    actual = _hexdigests(path, [name for name, want in (("md5", md5), ("sha256", sha256_prefix)) if want])
    if md5 and actual["md5"] != md5:
        return actual, f"md5 {actual['md5']} != expected {md5}"
    if sha256_prefix and not actual["sha256"].startswith(sha256_prefix):
        return actual, f"sha256 {actual['sha256']} does not start with expected {sha256_prefix}"
    return actual, None


def _human(n: int) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GiB"


def _total_size(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """Full file size from Content-Range (206) or offset + Content-Length."""
    match = re.match(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("Content-Range", ""))
    if match:
        return int(match.group(3))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


def _download_to(
    url: str, part: Path, timeout_s: float, log: Callable[[str], None], deadline: float | None = None
) -> bool:
    """One attempt: append to ``part`` from its current size (or restart); raise on a short read.

    Returns whether the server told the file's size (without it a connection that closes early
    cannot be told from the end of the file). ``deadline`` (a ``time.monotonic()`` value) is checked
    after every read, which returns what one socket read got, so a slow trickle cannot outlast it;
    no single read waits longer than ``timeout_s``, nor than the time left when the attempt starts.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed()
        timeout_s = min(timeout_s, left)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            log(f"{url}: server has no bytes past {offset}; checking the partial file as complete")
            return True
        raise
    with resp:
        content_range = resp.headers.get("Content-Range", "")
        if resp.status == 206:
            if not content_range.startswith(f"bytes {offset}-"):
                part.unlink(missing_ok=True)  # bytes from elsewhere in the file: start over
                raise OSError(f"asked for bytes from {offset}, got Content-Range {content_range!r}")
            log(f"{url}: resuming at {_human(offset)}")
            mode = "ab"
        else:
            if offset:
                log(f"{url}: server ignored the Range request; restarting from zero")
            offset, mode = 0, "wb"
        total = _total_size(resp, offset)
        done, next_log = offset, 0.0
        with open(part, mode) as f:
            for block in iter(lambda: resp.read1(CHUNK), b""):
                f.write(block)
                done += len(block)
                if deadline is not None and time.monotonic() > deadline:
                    raise _DeadlinePassed()
                if done >= next_log or done == total:  # the 100% line, however the reads fell
                    if total:
                        log(f"{part.name}: {_human(done)} / {_human(total)} ({100 * done / total:.0f}%)")
                        next_log = done + PROGRESS_STEP * total
                    else:
                        log(f"{part.name}: {_human(done)}")
                        next_log = done + UNKNOWN_SIZE_STEP
    if total is not None and done != total:
        raise _ShortRead(f"connection closed at {done} of {total} bytes")
    return total is not None


def fetch(
    url: str,
    dest: str | os.PathLike,
    md5: str | None,
    retries: int = 5,
    timeout_s: float = 60,
    backoff_s: float = 2.0,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    sha256_prefix: str | None = None,
    deadline_s: float | None = None,
    deadline_name: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; resume, retry, never leave a bad ``dest``.

    The file must match ``md5`` and/or start its sha256 with ``sha256_prefix``; at
    least one is required, so unverified bytes are never accepted. Bytes go to
    ``dest + ".part"``; a network error keeps them for the next attempt to resume, a
    checksum mismatch deletes them. Waits ``backoff_s * 2**(attempt-1)`` between
    attempts (``sleep`` is injectable for tests). ``deadline_s`` bounds the wall-clock time of
    all attempts together (checked between reads and before each retry; ``deadline_name``, e.g. the
    config key that sets it, is named in the error); the ``.part`` file is kept for a rerun to
    resume. Raises :class:`DownloadError`.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    if not md5 and not sha256_prefix:
        raise ValueError(f"fetch({url}) needs md5 or sha256_prefix: it never accepts unverified bytes")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    sha256_prefix = sha256_prefix.lower() if sha256_prefix else None
    checks = " and ".join(name for name, want in (("md5", md5), ("sha256", sha256_prefix)) if want)
    if dest.is_file():
        _, mismatch = _verify(dest, md5, sha256_prefix)
        if mismatch is None:
            log(f"{dest}: already present, {checks} ok")
            return dest
        log(f"{dest}: {mismatch}; deleting it and downloading again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    actual: dict[str, str] = {}
    failure = None  # the last failed attempt's error

    def deadline_passed() -> DownloadError:
        size = part.stat().st_size if part.exists() else 0
        named = f" ({deadline_name})" if deadline_name else ""
        kept = f"; the {size} bytes in {part} are kept for the next run to resume" if size else ""
        before = f"; the attempt before failed: {failure}" if failure else ""
        message = (
            f"download of {url} exceeded the deadline of {deadline_s:g} s{named} after {size} bytes"
            f" ({_human(size)}){kept}{before}"
        )
        return DownloadError(message, url, dest, md5, None, sha256_prefix, None)

    for attempt in range(1, retries + 1):
        log(f"{url}: attempt {attempt}/{retries} -> {dest}")
        try:
            sized = _download_to(url, part, timeout_s, log, deadline)
        except _DeadlinePassed:
            raise deadline_passed() from None
        except urllib.error.HTTPError as err:
            failure = f"HTTP {err.code} {err.reason}"
            if err.code in _PERMANENT_HTTP:
                break
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, short reads
            failure = f"{type(err).__name__}: {err}"
        else:
            actual, mismatch = _verify(part, md5, sha256_prefix)
            if mismatch is None:
                os.replace(part, dest)
                log(f"{dest}: done, {checks} ok")
                return dest
            size = part.stat().st_size
            part.unlink()
            failure = mismatch
            if not sized:
                failure += (
                    f"; got {size} bytes and the server sent no Content-Length, so a connection that "
                    "closed early leaves a short file"
                )
        log(f"{url}: attempt {attempt} failed ({failure})")
        if attempt < retries:
            wait = backoff_s * 2 ** (attempt - 1)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise deadline_passed()
            sleep(wait)
    unknown = "unknown (no complete download)"
    expected = []
    if md5:
        expected.append(f"expected md5 {md5}, actual md5 {actual.get('md5', unknown)}")
    if sha256_prefix:
        expected.append(f"expected sha256 prefix {sha256_prefix}, actual sha256 {actual.get('sha256', unknown)}")
    message = f"could not download {dest} from {url} after {attempt} attempt(s); last failure: {failure}; "
    message += "; ".join(expected)
    raise DownloadError(message, url, dest, md5, actual.get("md5"), sha256_prefix, actual.get("sha256"))


def _escapes(path: str) -> bool:
    """True if a relative archive path leaves the extraction folder once normalised."""
    norm = posixpath.normpath(path)
    return posixpath.isabs(path) or norm == ".." or norm.startswith("../")


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    if posixpath.isabs(member.name):
        return "absolute path"
    if _escapes(member.name):
        return "path escapes the extraction folder"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or fifo"
    if member.issym():
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
        if posixpath.isabs(member.linkname) or _escapes(target):
            return f"symlink to {member.linkname!r} points outside"
    if member.islnk() and _escapes(member.linkname):
        return f"hardlink to {member.linkname!r} points outside"
    return None


def _read_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """All members, after checking the end-of-archive block that a truncated tar lacks.

    tarfile silently stops at a header cut short, so a tar truncated between members
    would otherwise "extract" fine with files missing.
    """
    members = tar.getmembers()
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise ArchiveError(f"{archive}: truncated archive (no end-of-archive marker after the last member)")
    return members


def safe_extract(archive: str | os.PathLike, dest_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Path:
    """Extract a tar / tar.gz into ``dest_dir`` atomically, refusing any unsafe member.

    Every member is vetted first (absolute paths, ``..``, links leaving the tree,
    devices); extraction then still runs with ``filter="data"`` as a second line of
    defence. Raises :class:`UnsafeArchiveError` or :class:`ArchiveError`, leaving
    nothing at ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("safe_extract needs tarfile extraction filters (Python >= 3.12, 3.11.4, 3.10.12, 3.9.17)")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _read_members(tar, archive)
            for member in members:
                reason = _unsafe_reason(member)
                if reason:
                    raise UnsafeArchiveError(f"{archive}: refusing unsafe member {member.name!r} ({reason})")
            log(f"{archive}: extracting {len(members)} members -> {dest_dir}")
            with atomic_dir(dest_dir) as tmp:
                tar.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as err:
        if isinstance(err, tarfile.FilterError):
            raise UnsafeArchiveError(f"{archive}: refusing unsafe member ({err})") from err
        raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(err).__name__}: {err})") from err
    log(f"{archive}: extracted to {dest_dir}")
    return dest_dir
