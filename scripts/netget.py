"""One HTTP GET with retries, shared by debhouse.py and npmhouse.py.

Why: a fresh-clone CI run (stop 21, 2026-12-05) lost its whole Docker tier to one
"Temporary failure in name resolution" from deb.debian.org while 8 threads were fetching; the
same URLs resolved at once on a rerun. DNS hiccups and 5xx answers are transient, a 404 (a
superseded Debian version) is not: only the former are retried, with backoff (1, 2, 4, 8 s).
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

ATTEMPTS = 5


def _transient(err: Exception) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code == 429
    return isinstance(err, (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError))


@contextmanager
def urlopen(url: str, timeout: float = 120) -> Iterator:
    """urllib.request.urlopen, retried on transient network errors; the last error is raised."""
    for attempt in range(ATTEMPTS):
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
            break
        except Exception as err:  # noqa: BLE001 - classified right below
            if not _transient(err) or attempt == ATTEMPTS - 1:
                raise
            delay = 2 ** attempt
            print(f"{url}: {err} (retry {attempt + 1}/{ATTEMPTS - 1} in {delay} s)", file=sys.stderr)
            time.sleep(delay)
    with response:
        yield response
