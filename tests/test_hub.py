"""Pretrained names, Hub downloads and strict loading, against a local stand-in for the Hub.

``HubServer`` answers ``HEAD`` / ``GET /{owner}/{name}/resolve/{revision}/{filename}`` the way the
Hugging Face Hub does for ``huggingface_hub.hf_hub_download`` (``X-Repo-Commit``, ``ETag`` /
``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``, ranged ``GET`` and the ``X-Error-Code``
header that selects the error class), so every test runs offline and fast.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from torch_label_mae import HubError, LabelCompleter, LMAEConfig, hub, list_pretrained

# ----------------------------------------------------------------------------------------------------
# a local Hub
# ----------------------------------------------------------------------------------------------------
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class HubServer:
    """A threaded HTTP server on 127.0.0.1 serving ``files[(repo_id, revision)] = {filename: bytes}``.

    - unknown repo: 401 + ``X-Error-Code: RepoNotFound`` (what the Hub answers for missing or private repos)
    - unknown revision: 404 + ``RevisionNotFound``; unknown file: 404 + ``EntryNotFound``
    - ``truncate = {filename: mode}`` breaks a file's transfer: ``"size"`` announces the full size on
      ``HEAD`` but sends a self-consistent shorter body; ``"close"`` sends ``Content-Length`` of the full
      file, writes half of it and drops the connection; ``"once"`` does that only on the first ``GET``.
    - ``requests`` records ``(method, path)`` of every request; :meth:`gets` counts downloads.
    """

    def __init__(self, files: dict | None = None):
        self.files: dict[tuple[str, str], dict[str, bytes]] = dict(files or {})
        self.truncate: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str] = []  # Range headers of ranged GETs (resumed downloads)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> HubServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 - http.server's naming
                server._answer(self, head=True)

            def do_GET(self):  # noqa: N802
                server._answer(self, head=False)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- bookkeeping --------------------------------------------------------------------------------
    def gets(self, filename: str | None = None) -> int:
        """Number of ``GET`` requests (for ``filename`` when given)."""
        with self._lock:
            return sum(m == "GET" and (filename is None or p.endswith("/" + filename)) for m, p in self.requests)

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return revision
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    # -- the resolve endpoint -----------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        with self._lock:
            self.requests.append((h.command, h.path))
        m = _RESOLVE.match(h.path.split("?", 1)[0])
        if m is None:
            return self._error(h, 404, None, "not a resolve url")
        repo, rev, filename = m["repo"], unquote(m["rev"]), unquote(m["file"])
        revisions = {r: f for (rid, r), f in self.files.items() if rid == repo}
        if not revisions:
            return self._error(h, 401, "RepoNotFound", "Repository not found")
        by_commit = {self.commit(repo, r): f for r, f in revisions.items()}
        files = revisions.get(rev, by_commit.get(rev))
        if files is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        commit = rev if rev in by_commit else self.commit(repo, rev)
        if filename not in files:
            return self._error(h, 404, "EntryNotFound", "Entry not found", commit)
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest()
        mode = self.truncate.get(filename)
        start, end, status = 0, len(data), 200
        rng = _RANGE.match(h.headers.get("Range", "") or "")
        if rng and not head:
            with self._lock:
                self.ranges.append(rng[0])
            start = int(rng[1])
            end = int(rng[2]) + 1 if rng[2] else len(data)
            status = 206
        body = data[start:end]
        cut = None  # bytes actually written when the transfer is broken on purpose
        if mode == "size" and not head:
            body = body[: len(body) // 2]
        elif (mode == "close" or (mode == "once" and self.gets(filename) == 1)) and not head:
            cut = len(body) // 2
        h.send_response(status)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        if filename.endswith(".safetensors"):  # LFS files: the Hub adds the linked etag / size
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) if head else len(body)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if head:
            return
        try:
            h.wfile.write(body if cut is None else body[:cut])
            h.wfile.flush()
        except OSError:
            pass
        if cut is not None:
            h.close_connection = True

    @staticmethod
    def _error(h, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code is not None:
            h.send_header("X-Error-Code", code)
            h.send_header("X-Error-Message", message)
        if commit is not None:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
