"""scripts/netget.py: the fetchers' downloads survive transient failures, resume, and fail in one line.

A local HTTP server plays the flaky registry: 503s, a connection cut mid-body, Range requests, 404."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("netget", ROOT / "scripts" / "netget.py")
netget = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netget)

BODY = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BODY).digest()


class Registry(BaseHTTPRequestHandler):
    """GET /ok, /flaky (503 twice), /cut (the first answer breaks off after 300 KB), /gone (404)."""

    hits: dict[str, int] = {}
    ranges: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/gone":
            self.send_error(404, "Not Found")
            return
        if self.path == "/flaky" and n <= 2:
            self.send_error(503, "Service Unavailable")
            return
        start = 0
        if rng := self.headers.get("Range"):
            self.ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
        body = BODY[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/cut" and n == 1:
            self.wfile.write(body[:300_000])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-body
            return
        self.wfile.write(body)


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setattr(netget.time, "sleep", lambda s: None)  # the backoff, not under test here
    Registry.hits, Registry.ranges = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_transient_errors_are_retried(server: str, tmp_path: Path) -> None:
    assert netget.download(f"{server}/flaky", tmp_path / "f", "sha256", SHA) == "fetched"
    assert Registry.hits["/flaky"] == 3 and (tmp_path / "f").read_bytes() == BODY


def test_a_broken_transfer_resumes_with_a_range_request(server: str, tmp_path: Path) -> None:
    assert netget.download(f"{server}/cut", tmp_path / "c", "sha256", SHA) == "fetched"
    assert Registry.hits["/cut"] == 2
    assert len(Registry.ranges) == 1 and int(Registry.ranges[0].split("=")[1].rstrip("-")) > 0
    assert (tmp_path / "c").read_bytes() == BODY and not (tmp_path / "c.part").exists()


def test_what_is_already_there_is_not_fetched_again(server: str, tmp_path: Path) -> None:
    (tmp_path / "o").write_bytes(BODY)
    assert netget.download(f"{server}/ok", tmp_path / "o", "sha256", SHA) == "cached"
    assert "/ok" not in Registry.hits


def test_a_stale_part_file_is_replaced(server: str, tmp_path: Path) -> None:
    (tmp_path / "s.part").write_bytes(b"x" * 1000)  # not a prefix of the file
    assert netget.download(f"{server}/ok", tmp_path / "s", "sha256", SHA) == "fetched"
    assert (tmp_path / "s").read_bytes() == BODY


def test_a_missing_file_fails_in_one_line_with_the_url_and_what_to_do(server: str, tmp_path: Path) -> None:
    with pytest.raises(netget.FetchError) as err:
        netget.download(f"{server}/gone", tmp_path / "g", "sha256", SHA, hint="re-lock with make lock-apt")
    msg = str(err.value)
    assert "\n" not in msg and f"{server}/gone" in msg and "404" in msg and "make lock-apt" in msg
    assert Registry.hits["/gone"] == 1  # a 404 is not retried


def test_a_wrong_file_is_refused_not_kept(server: str, tmp_path: Path) -> None:
    with pytest.raises(netget.FetchError, match="does not match"):
        netget.download(f"{server}/ok", tmp_path / "w", "sha256", b"\0" * 32)
    assert not (tmp_path / "w").exists() and not (tmp_path / "w.part").exists()


def test_an_unreachable_host_fails_in_one_line_after_retries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(netget.time, "sleep", lambda s: None)
    with pytest.raises(netget.FetchError) as err:
        netget.download("http://127.0.0.1:9/x.deb", tmp_path / "x", "sha256", SHA)
    assert "\n" not in str(err.value) and "after 5 tries" in str(err.value) and "rerun" in str(err.value)
