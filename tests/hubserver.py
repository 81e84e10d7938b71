"""A local server that speaks the Hugging Face Hub's file protocol the way huggingface_hub uses it.

``HEAD``/``GET /{repo}/resolve/{revision}/{path}``:

- a large (LFS) file answers ``302`` with ``X-Repo-Commit``, ``X-Linked-Etag`` (the content's
  SHA-256), ``X-Linked-Size`` and a ``Location`` on another host name (``localhost`` instead of
  ``127.0.0.1``), the way the hub sends large files to its storage; huggingface_hub reads the
  metadata from the redirect itself and downloads from the other host;
- a small file answers ``200`` with ``X-Repo-Commit``, ``ETag`` (its git blob SHA-1) and the body;
- an unknown revision or path answers ``404`` with ``X-Error-Code`` ``RevisionNotFound`` or
  ``EntryNotFound``.

The storage host honours ``Range: bytes=N-`` (``206``). Per file, ``corrupt`` sends other bytes
than the advertised hash, and ``cut_once`` closes the connection half-way through the first
download (64 KiB before its end), so that the client has to resume with a Range request.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    host: str
    path: str
    headers: dict[str, str]  # names in lower case


class HubServer:
    def __init__(self, repo: str, revision: str, files: dict[str, bytes], *, lfs: set[str]):
        self.repo, self.revision, self.files, self.lfs = repo, revision, files, lfs
        self.corrupt: set[str] = set()
        self.cut_once: set[str] = set()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage_url = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def _by_sha256(self, digest: str) -> list[str]:
        """Every repository path whose content has this SHA-256 (storage is content-addressed)."""
        return [p for p in self.files if self.sha256(p) == digest]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(
                self,
                code: int,
                headers: dict[str, str],
                body: bytes = b"",
                *,
                send_body: bool = True,
                cut: bool = False,
            ):
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body and body:
                    if cut:  # all but the last 64 KiB of the promised bytes, then the connection drops
                        self.wfile.write(body[: max(len(body) - 65536, 1)])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)

            def _error(self, code: int, error_code: str, message: str, send_body: bool):
                body = message.encode()
                self._send(
                    code,
                    {"X-Error-Code": error_code, "X-Error-Message": message, "Content-Type": "text/plain"},
                    body,
                    send_body=send_body,
                )

            def _serve(self, send_body: bool):
                with hub._lock:
                    hub.requests.append(
                        Request(
                            self.command,
                            self.headers.get("Host", ""),
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                        )
                    )
                if self.path.startswith("/storage/"):
                    return self._storage(self.path[len("/storage/") :], send_body)
                prefix = f"/{hub.repo}/resolve/"
                if not self.path.startswith(prefix):
                    return self._error(404, "RepoNotFound", f"Repository not found: {self.path}", send_body)
                revision, _, path = self.path[len(prefix) :].partition("/")
                if revision not in (hub.revision, "main"):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
                if path not in hub.files:
                    return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", send_body)
                data = hub.files[path]
                common = {"X-Repo-Commit": hub.revision}
                if path in hub.lfs:
                    return self._send(
                        302,
                        {
                            **common,
                            "Location": f"{hub.storage_url}/storage/{hub.sha256(path)}",
                            "X-Linked-Etag": f'"{hub.sha256(path)}"',
                            "X-Linked-Size": str(len(data)),
                            "ETag": '"the-pointer-file-etag"',
                            "Content-Length": "0",
                        },
                        send_body=False,
                    )
                blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
                self._send(200, {**common, "ETag": f'"{blob}"'}, data, send_body=send_body)

            def _storage(self, digest: str, send_body: bool):
                paths = hub._by_sha256(digest.split("?")[0])
                if not paths:
                    return self._error(404, "EntryNotFound", "no such object", send_body)
                data = hub.files[paths[0]]
                if hub.corrupt.intersection(paths):
                    data = data[:-10] + b"corrupted!"
                cut = False
                with hub._lock:
                    if hub.cut_once.intersection(paths) and send_body:
                        hub.cut_once.difference_update(paths)
                        cut = True
                start = 0
                header = self.headers.get("Range", "")
                if header.startswith("bytes=") and header[6:].split("-")[0].isdigit():
                    start = int(header[6:].split("-")[0])
                if start:
                    part = data[start:]
                    return self._send(
                        206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, part, send_body=send_body
                    )
                self._send(200, {"Content-Length": str(len(data))}, data, send_body=send_body, cut=cut)

            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

        return Handler
