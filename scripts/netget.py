"""HTTP downloads with retries and resume, shared by debhouse.py and npmhouse.py.

Why: a fresh-clone CI run (stop 21, 2026-12-05) lost its whole Docker tier to one
"Temporary failure in name resolution" from deb.debian.org while 8 threads were fetching; the
same URLs resolved at once on a rerun. DNS hiccups, timeouts, resets and 5xx/429 answers are
transient, a 404 (a superseded Debian version) is not: only the former are retried, with backoff
(1, 2, 4, 8 s). A download that breaks off resumes from its `.part` file with an HTTP Range request
(Debian's mirrors and the npm registry both answer 206), so a 100 MB Chromium .deb is not fetched
twice. What finally fails raises `FetchError`, one line naming the URL, the error and what to do;
the fetchers print it instead of a traceback.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ATTEMPTS = 5


class FetchError(Exception):
    """A download that failed for good: str() is the one line to show."""


def _transient(err: Exception) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code == 429
    return isinstance(err, (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError))


def _why(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}"


def _advice(err: Exception, hint: str) -> str:
    if isinstance(err, urllib.error.HTTPError) and err.code == 404:
        return f"the registry no longer has it: {hint}" if hint else "the registry no longer has it"
    return "check the network or proxy, then rerun (files already fetched are kept)"


@contextmanager
def urlopen(url: str, timeout: float = 120, headers: dict[str, str] | None = None,
            hint: str = "") -> Iterator:
    """urllib.request.urlopen, retried on transient network errors; FetchError when it gives up.

    hint: what to do when the URL is gone for good (404), e.g. "re-lock with make lock-apt"."""
    request = urllib.request.Request(url, headers=headers or {})
    for attempt in range(ATTEMPTS):
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
            break
        except Exception as err:  # noqa: BLE001 - classified right below
            if not _transient(err) or attempt == ATTEMPTS - 1:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise FetchError(f"{url}: {_why(err)}{tries}; {_advice(err, hint)}") from err
            delay = 2 ** attempt
            print(f"{url}: {_why(err)} (retry {attempt + 1}/{ATTEMPTS - 1} in {delay} s)", file=sys.stderr)
            time.sleep(delay)
    with response:
        yield response


def download(url: str, path: Path, algo: str, want: bytes, timeout: float = 120, hint: str = "") -> str:
    """Fetch url into path unless path already holds the bytes whose `algo` digest is `want`.

    Returns "cached" or "fetched". Streams into `<path>.part` and renames only after the digest
    matches; a `.part` left by a broken transfer is resumed (Range), and restarted from zero when the
    server ignores the range or the resumed bytes do not verify. FetchError on failure or mismatch."""
    if path.is_file() and _digest(path, algo) == want:
        return "cached"
    part = path.with_name(path.name + ".part")
    for attempt in range(ATTEMPTS):
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with urlopen(url, timeout=timeout, headers=headers, hint=hint) as r, \
                    open(part, "ab" if have and r.status == 206 else "wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
                # http.client's read(n) returns what came when a connection closes early, without an
                # error: a short body is a broken transfer, not a wrong file.
                length = r.headers.get("Content-Length")
                if length is not None and f.tell() < int(length) + (have if r.status == 206 else 0):
                    raise ConnectionError(f"connection closed after {f.tell()} bytes")
        except FetchError as err:
            cause = err.__cause__
            if have and isinstance(cause, urllib.error.HTTPError) and cause.code == 416:
                part.unlink()  # the range is past the end: the .part is stale; start from zero
                continue
            raise
        except (OSError, http.client.HTTPException) as err:  # broken off mid-stream: resume the .part
            if attempt == ATTEMPTS - 1:
                raise FetchError(f"{url}: {_why(err)} after {ATTEMPTS} tries; {_advice(err, hint)}") from err
            print(f"{url}: {_why(err)} mid-transfer (resuming, {attempt + 1}/{ATTEMPTS - 1})", file=sys.stderr)
            time.sleep(2 ** attempt)
            continue
        if _digest(part, algo) == want:
            part.replace(path)
            return "fetched"
        part.unlink()
        if not have:  # a whole, fresh download that does not verify: the lock or the registry is wrong
            raise FetchError(f"{url}: {algo} does not match the lock; the registry changed the file or the "
                             f"lock is wrong: {hint or 're-lock'}")
        # A resumed file that does not verify (the .part was stale): the next attempt starts from zero.
    raise FetchError(f"{url}: could not get a verified copy in {ATTEMPTS} tries; rerun")


def _digest(path: Path, algo: str) -> bytes:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()
