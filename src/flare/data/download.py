"""Download one published file: cached, resumable, checksummed, with bounded retries.

Client: pooch's ``HTTPDownloader`` (requests underneath), not huggingface_hub. The published
copies are plain HTTPS files (``<base>/datasets/<repo>/resolve/main/<file>``), so a plain-URL
client covers them and behaves the same against the Hub, a mirror or a local test server.
``hf_hub_download`` would need the Hub's API semantics (revision and ETag headers on a HEAD
request) imitated by any mirror or test server, keeps files in its own revision-addressed cache
layout, and does not check a sha256 that we pin. pooch streams in chunks, draws a tqdm progress
bar, and passes request options straight to requests, which is what the resume below is built
on. ``pooch.retrieve`` itself is not used: it silently re-downloads a cached file whose hash does
not match, and has neither retries nor resume.

What happens in :func:`fetch`:

- **Cache.** A file already at ``dest`` is hashed on every call: it is returned if it matches
  ``sha256`` (or when no hash is given) and is never downloaded again; a mismatch raises
  :class:`ChecksumMismatchError` and the file is left for the user to inspect or delete.
- **Atomicity.** Bytes go to ``<dest>.part``; it is renamed to ``dest`` only after the sha256 of
  the complete file is verified. ``dest`` therefore exists only as a complete, verified file.
- **Resumable** means, precisely: whatever is in ``<dest>.part`` — left by an earlier attempt in
  this call or by an interrupted earlier run — is kept, and the next request asks for the rest
  with ``Range: bytes=<size>-``. A ``206`` answer whose ``Content-Range`` starts at that size is
  appended; a ``200`` (the server ignored the range) replaces the partial file with the full
  body; a ``206`` at another offset discards the partial file and the attempt is retried; a
  ``416`` whose ``Content-Range`` total equals the partial size means the file is already
  complete. The final sha256 covers the whole assembled file, so a bad splice is caught: on a
  mismatch the partial file is deleted, never kept for the next resume.
- **Retries.** Connection errors, timeouts, a body shorter than its ``Content-Length`` and HTTP
  5xx/408/429 are retried up to ``retries`` times with exponential backoff
  (``backoff · 2^k`` seconds, at most 60 s); a 404/410 raises :class:`RemoteFileNotFoundError` at
  once, other 4xx a :class:`DownloadError`.
- **Timeout.** ``timeout`` bounds the connection and every socket read, so a server that sends
  headers and then stalls fails after ``timeout`` seconds (and is retried like any other
  timeout); a slow but steady transfer is not cut off.
- **Concurrency.** An exclusive lock on ``.<dest name>.lock`` (POSIX ``flock``) serialises
  processes fetching the same file, e.g. parallel workflow jobs that share one archive.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pooch
import requests
from tqdm import tqdm

log = logging.getLogger(__name__)

# A read cut short loses the chunk in flight (urllib3 drops it), so chunks stay small enough
# for a resume to keep almost everything that arrived.
_CHUNK_BYTES = 1 << 16
_MAX_BACKOFF_SECONDS = 60.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RETRY_STATUSES = frozenset({408, 429})
_NOT_FOUND_STATUSES = frozenset({404, 410})


class DownloadError(RuntimeError):
    """A file could not be downloaded (or failed verification)."""


class RemoteFileNotFoundError(DownloadError):
    """The server answered 404/410: the URL names no file. Not retried."""

    def __init__(self, url: str, status: int):
        self.url = url
        self.status = status
        super().__init__(f"{url} not found (HTTP {status}); check the URL or the source registry")


class ChecksumMismatchError(DownloadError):
    """A file's sha256 differs from the expected one."""

    def __init__(self, path: Path, expected: str, actual: str, detail: str = ""):
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        message = f"sha256 mismatch for {self.path}: expected {expected}, got {actual}"
        super().__init__(f"{message}; {detail}" if detail else message)


class _RetryableError(Exception):
    """One failed attempt that another attempt may fix."""


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a file matching ``sha256`` is already there (see module docstring).

    sha256: expected lower-case hex digest, or None to accept the file and learn its hash
        (:func:`fetch_with_sha256` returns it so the caller can record it).
    retries: attempts after the first one. timeout: seconds for connecting and for each read.
    progress: tqdm bar on stderr. backoff: first pause between attempts, in seconds.
    Returns ``dest`` as a Path.
    """
    path, _ = fetch_with_sha256(url, dest, sha256, retries=retries, timeout=timeout, progress=progress, backoff=backoff)
    return path


def fetch_with_sha256(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 1.0,
) -> tuple[Path, str]:
    """:func:`fetch`, also returning the file's sha256 (verified when ``sha256`` was given, computed otherwise)."""
    dest = Path(dest)
    expected = normalize_sha256(sha256) if sha256 is not None else None
    if int(retries) != retries or retries < 0:
        raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive; got {timeout!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(f".{dest.name}.lock")):
        if dest.exists():
            actual = sha256_file(dest)
            if expected is not None and actual != expected:
                raise ChecksumMismatchError(
                    dest, expected, actual,
                    "the cached file was modified or is from another version; delete it to download it again",
                )
            return dest, actual

        part = partial_path(dest)
        _download_with_retries(url, part, dest, int(retries), float(timeout), progress, float(backoff))
        actual = sha256_file(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise ChecksumMismatchError(dest, expected, actual, f"downloaded from {url}; the download was discarded")
        os.replace(part, dest)
        log.info("downloaded %s -> %s (sha256 %s)", url, dest, actual)
        return dest, actual


def partial_path(dest: str | os.PathLike) -> Path:
    """Where the bytes of ``dest`` accumulate before verification: ``<dest>.part``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def normalize_sha256(value: str) -> str:
    """A sha256 hex digest in lower case; ValueError unless it is 64 hex digits."""
    digest = str(value).strip().lower()
    if not _SHA256_RE.match(digest):
        raise ValueError(f"not a sha256 hex digest (64 hex digits): {value!r}")
    return digest


@contextmanager
def file_lock(lock_path: str | os.PathLike):
    """Exclusive inter-process lock held while the block runs (POSIX ``flock``; no-op elsewhere).

    The lock file is left in place: deleting it while another process waits on it would let a
    third process take a second, independent lock.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; single-process use is still correct
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download_with_retries(url, part: Path, dest: Path, retries: int, timeout: float, progress: bool, backoff: float) -> None:
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, part, timeout, progress, label=dest.name)
            return
        except _RetryableError as err:
            if attempt == attempts:
                kept = f"; {part.stat().st_size} bytes kept in {part} for the next try" if part.exists() else ""
                raise DownloadError(
                    f"failed to download {url} to {dest} after {attempts} attempt(s): {err}{kept}"
                ) from err
            pause = min(backoff * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS)
            log.warning("download of %s failed (attempt %d of %d): %s; retrying in %.1f s", url, attempt, attempts, err, pause)
            time.sleep(pause)


class _PartialFile:
    """``<dest>.part`` opened for appending, plus the requests response hook that checks the
    server's answer to our Range request before any byte of the body is written."""

    def __init__(self, path: Path, url: str):
        self.path = path
        self.url = url
        self.handle = open(path, "ab")
        self.offset = self.handle.tell()  # bytes already there: what we ask the server to skip
        self.expected_size: int | None = None  # full file size, when the server tells it
        self.already_complete = False

    def request_headers(self) -> dict[str, str]:
        # identity: byte offsets must refer to the file itself, not to a compressed transfer.
        headers = {"Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
        return headers

    def on_response(self, response, *args, **kwargs):
        if response.is_redirect:
            return response
        if response.status_code == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != self.offset:
                self.restart()
                raise _RetryableError(f"server resumed at byte {start}, not at {self.offset}; partial file discarded")
            self.expected_size = total
        elif response.status_code == 200:
            if self.offset:
                log.info("%s ignored the Range request; downloading %s from the start", self.url, self.path.name)
                self.restart()
            length = response.headers.get("Content-Length")
            encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
            self.expected_size = int(length) if length and length.isdigit() and not encoded else None
        elif response.status_code == 416 and self.offset:
            _, total = _content_range(response.headers.get("Content-Range", ""))
            if total == self.offset:
                self.already_complete = True  # an earlier attempt got every byte
            else:
                self.restart()
        return response

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.offset = 0

    def write(self, chunk: bytes) -> int:
        return self.handle.write(chunk)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())  # data on disk before the file can be renamed into place
        self.handle.close()


class _ProgressBar(tqdm):
    """tqdm bar that pooch accepts as a custom progress bar: pooch tests it with ``bool()``, which a
    plain tqdm refuses while its total is unknown (pooch sets ``total`` from Content-Length)."""

    def __bool__(self) -> bool:
        return True


def _download_once(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    target = _PartialFile(part, url)
    bar = _ProgressBar(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) if progress else None
    downloader = pooch.HTTPDownloader(
        progressbar=bar if bar is not None else False,
        chunk_size=_CHUNK_BYTES,
        timeout=timeout,
        headers=target.request_headers(),
        hooks={"response": target.on_response},
    )
    try:
        downloader(url, target, None)
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 416 and target.already_complete:
            return
        if status in _NOT_FOUND_STATUSES:
            raise RemoteFileNotFoundError(url, status) from None
        if status == 416 or status in _RETRY_STATUSES or (status is not None and status >= 500):
            raise _RetryableError(f"HTTP {status} from {url}") from err
        raise DownloadError(f"HTTP {status} from {url}: {err}") from err
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        # ConnectionError also covers read timeouts and connections closed mid-body.
        raise _RetryableError(f"{type(err).__name__}: {err}") from err
    finally:
        target.close()
        if bar is not None:
            bar.close()
        if part.stat().st_size == 0:
            part.unlink()  # nothing arrived: leave no empty partial file behind
    size = part.stat().st_size if part.exists() else 0
    if target.expected_size is not None and size != target.expected_size:
        raise _RetryableError(f"incomplete body: have {size} of {target.expected_size} bytes")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """``bytes 100-199/500`` -> (100, 500); ``bytes */500`` -> (None, 500); unknown parts are None."""
    match = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", header or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total
