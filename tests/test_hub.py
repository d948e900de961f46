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
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from synth import TINY_MODEL

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
    - ``status`` answers everything with that HTTP status (``file_status[name]``: that file's requests only);
      ``hub_headers = False`` drops the Hub's headers
    - ``requests`` records ``(method, path)`` of every request; :meth:`gets` counts downloads.
    """

    def __init__(self, files: dict | None = None):
        self.files: dict[tuple[str, str], dict[str, bytes]] = dict(files or {})
        self.truncate: dict[str, str] = {}
        self.status: int | None = None  # answer every request with this status (e.g. 503), no Hub headers
        self.file_status: dict[str, int] = {}  # answer the requests of one file name with this status
        self.hub_headers = True  # False: a plain file server (no X-Repo-Commit / ETag), not a Hub
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
        if self.status is not None:
            return self._error(h, self.status, None, "unavailable")
        failing = [st for name, st in self.file_status.items() if h.path.split("?", 1)[0].endswith("/" + name)]
        if failing:
            return self._error(h, failing[0], None, "unavailable")
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
        if self.hub_headers:
            h.send_header("X-Repo-Commit", commit)
            h.send_header("ETag", f'"{etag}"')
        if self.hub_headers and filename.endswith(".safetensors"):  # LFS files: the linked etag / size
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


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------
TINY = dict(TINY_MODEL, num_classes=5)
REPO = "acme/tiny-completer"


def make_folder(path: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny completer (``config.json`` + ``model.safetensors``) to ``path``."""
    torch.manual_seed(seed)
    LabelCompleter(LMAEConfig.tiny(**{**TINY, **overrides})).save_pretrained(path)
    return path


def read_files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in (hub.CONFIG_NAME, hub.WEIGHTS_NAME)}


def assert_weights(completer: LabelCompleter, folder: Path) -> None:
    want = load_file(str(folder / hub.WEIGHTS_NAME))
    got = completer.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k].cpu(), v), k


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two tiny completers with different weights: the repo's ``main`` and ``v1``."""
    root = tmp_path_factory.mktemp("models")
    return {"main": make_folder(root / "main", seed=0), "v1": make_folder(root / "v1", seed=1)}


@pytest.fixture(autouse=True)
def hub_env(monkeypatch):
    """No real Hub, no token, no offline flag or timeout from the environment, no back-off sleeps."""
    from huggingface_hub import constants
    from huggingface_hub import file_download as hf_download
    from huggingface_hub.utils import _http as hf_http

    for var in ("HF_ENDPOINT", hub.TIMEOUT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    no_sleep = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    no_sleep.sleep = lambda seconds: None
    monkeypatch.setattr(hf_http, "time", no_sleep)
    monkeypatch.setattr(hf_download, "time", no_sleep)


@pytest.fixture
def server(folders):
    srv = HubServer({(REPO, "main"): read_files(folders["main"]), (REPO, "v1"): read_files(folders["v1"])}).start()
    yield srv
    srv.stop()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


def load(name, server, cache, **kw) -> LabelCompleter:
    return LabelCompleter.from_pretrained(name, cache_dir=cache, endpoint=server.url, device="cpu", **kw)


def test_a_repo_with_a_label_set_loads_with_it_and_each_file_is_checked_before_the_next(tmp_path, cache):
    """push_to_hub writes label_set.json; from_pretrained(repo id) fetches it. An invalid config or label
    set is refused before the weights are fetched (a bad config could name GiBs)."""
    agnostic = LabelCompleter(LMAEConfig.tiny(**{**TINY, "num_classes": 32, "class_agnostic": True}))
    agnostic.label_set = "voc"
    agnostic.save_pretrained(tmp_path / "voc")
    files = {f.name: f.read_bytes() for f in (tmp_path / "voc").iterdir() if f.suffix in (".json", ".safetensors")}
    assert hub.LABEL_SET_NAME in files
    bad_config = dict(files, **{hub.CONFIG_NAME: json.dumps({"version": 2, "encoder_dim": 10**6}).encode()})
    bad_set = dict(files, **{hub.LABEL_SET_NAME: b'{"name": "x", "class_names": []}'})
    srv = HubServer({("me/voc", "main"): files, ("me/bad", "main"): bad_config, ("me/badset", "main"): bad_set})
    srv.start()
    try:
        c = load("me/voc", srv, cache)
        assert c.label_set == agnostic.label_set and c.conventions() == agnostic.conventions()
        with pytest.raises(hub.CorruptWeightsError, match=r"config.json: invalid config \(LMAEConfig.encoder_dim="):
            load("me/bad", srv, cache)
        with pytest.raises(hub.CorruptWeightsError, match=r"label_set.json: invalid label set"):
            load("me/badset", srv, cache)
        assert [p for m, p in srv.requests if m == "GET" and p.endswith(hub.WEIGHTS_NAME)] == [
            "/me/voc/resolve/main/model.safetensors"
        ]
        srv.file_status = {hub.LABEL_SET_NAME: 503}  # a failed request is no "the repo has none"
        with pytest.raises(hub.HubServerError, match="label_set.json") as e:
            load("me/voc", srv, tmp_path / "other-cache")
        assert "load offline" not in str(e.value)  # nothing cached there to load offline
        assert load("me/voc", srv, cache, local_files_only=True).label_set == agnostic.label_set  # cached with it
        for f in cache.rglob(hub.LABEL_SET_NAME):  # the config and weights cached, the label set not
            f.unlink()
        with pytest.raises(hub.HubServerError, match="label_set.json.*load offline"):
            load("me/voc", srv, cache)
        srv.file_status = {hub.LABEL_SET_NAME: 404}  # a plain 404 (a mirror without the Hub's error codes)
        assert load("me/voc", srv, tmp_path / "third-cache").label_set is None
        srv.file_status = {}
        offline = dict(cache_dir=cache, endpoint=srv.url, device="cpu", local_files_only=True)
    finally:
        srv.stop()
    assert not list(cache.rglob(hub.LABEL_SET_NAME))  # a cache an earlier version filled: no label set in it
    with pytest.warns(UserWarning, match="label_set.json is not in the local cache"):
        assert LabelCompleter.from_pretrained("me/voc", **offline).label_set is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------------
# downloads and the cache
# ----------------------------------------------------------------------------------------------------
def test_repo_id_downloads_then_loads_from_cache(server, cache, folders):
    c = load(REPO, server, cache)
    assert isinstance(c, LabelCompleter) and not c.training and c.device == torch.device("cpu")
    assert c.config == LMAEConfig.tiny(**TINY) and c.label_set is None  # a repo without label_set.json
    assert_weights(c, folders["main"])
    assert server.gets(hub.CONFIG_NAME) == 1 and server.gets(hub.WEIGHTS_NAME) == 1
    assert list((cache / "models--acme--tiny-completer" / "snapshots").iterdir())

    n = len(server.requests)
    assert_weights(load(REPO, server, cache, local_files_only=True), folders["main"])
    assert len(server.requests) == n  # local_files_only: no request at all

    assert_weights(load(REPO, server, cache), folders["main"])
    assert server.gets() == 2  # online again: metadata checked, nothing downloaded twice

    url = server.url
    server.stop()
    c = LabelCompleter.from_pretrained(REPO, cache_dir=cache, endpoint=url, device="cpu")  # Hub gone: cache
    assert_weights(c, folders["main"])


def test_hf_endpoint_is_read_at_call_time(server, cache, folders, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    c = LabelCompleter.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert_weights(c, folders["main"])
    assert server.gets(hub.WEIGHTS_NAME) == 1


def test_resolve_returns_the_snapshot_folder(server, cache):
    folder = hub.resolve(REPO, cache_dir=cache, endpoint=server.url)
    assert (folder / hub.CONFIG_NAME).is_file() and (folder / hub.WEIGHTS_NAME).is_file()
    assert folder.name == HubServer.commit(REPO, "main")


def test_revision_and_commit_hash(server, cache, folders):
    assert_weights(load(REPO, server, cache, revision="v1"), folders["v1"])
    assert_weights(load(REPO, server, cache, revision=HubServer.commit(REPO, "v1")), folders["v1"])
    assert_weights(load(REPO, server, cache, revision="v1", local_files_only=True), folders["v1"])
    assert_weights(load(REPO, server, cache), folders["main"])


def test_force_download_fetches_again(server, cache, folders, monkeypatch):
    load(REPO, server, cache)
    assert_weights(load(REPO, server, cache, force_download=True), folders["main"])
    assert server.gets(hub.WEIGHTS_NAME) == 2
    with pytest.raises(ValueError, match="force_download=True and local_files_only=True contradict"):
        load(REPO, server, cache, force_download=True, local_files_only=True)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # cached: not "not in the local cache"
    with pytest.raises(ValueError, match="force_download=True and HF_HUB_OFFLINE=1 contradict"):
        load(REPO, server, cache, force_download=True)


def test_interrupted_download_resumes(server, cache, folders):
    server.truncate = {hub.WEIGHTS_NAME: "once"}  # connection drops half-way through the first GET
    assert_weights(load(REPO, server, cache), folders["main"])
    assert server.gets(hub.WEIGHTS_NAME) == 2  # retried (ranged when some bytes had been written)


# ----------------------------------------------------------------------------------------------------
# registered names, bundled copies, datasets
# ----------------------------------------------------------------------------------------------------
def register(monkeypatch, entries, bundled: dict[str, Path] | None = None) -> None:
    monkeypatch.setattr(hub, "REGISTRY", {e.name: e for e in entries})
    monkeypatch.setattr(hub, "bundled_dir", lambda name: (bundled or {}).get(name))


def test_registered_name_uses_the_bundled_copy(server, cache, folders, monkeypatch):
    register(monkeypatch, [hub.Pretrained("toy-m0.5", REPO, "v1", "toy", 0.5)], {"toy-m0.5": folders["main"]})
    c = load("toy-m0.5", server, cache)
    assert_weights(c, folders["main"])
    assert server.requests == []  # bundled: no network
    assert c.routes == []


def test_registered_name_downloads_its_repo_and_revision(server, cache, folders, monkeypatch):
    register(monkeypatch, [hub.Pretrained("toy-m0.5", REPO, "v1", "toy", 0.5)])
    assert_weights(load("toy-m0.5", server, cache), folders["v1"])
    assert all(f"/{REPO}/resolve/v1/" in p for _, p in server.requests)


def test_registered_name_with_another_revision_skips_the_bundle(server, cache, folders, monkeypatch):
    register(monkeypatch, [hub.Pretrained("toy-m0.5", REPO, "v1", "toy", 0.5)], {"toy-m0.5": folders["v1"]})
    assert_weights(load("toy-m0.5", server, cache, revision="main"), folders["main"])
    assert server.gets(hub.WEIGHTS_NAME) == 1


def test_a_family_name_passes_its_revision_to_every_member_and_a_folder_takes_none(server, cache, folders, monkeypatch):
    entries = [hub.Pretrained(f"toy-m{r}", REPO, "v1", "toy", r) for r in (0.25, 0.5)]
    register(monkeypatch, entries, {e.name: folders["v1"] for e in entries})
    routed = load("toy", server, cache, revision="main")  # not the bundled v1 copies
    assert len(routed.routes) == 2 and server.gets(hub.WEIGHTS_NAME) == 1  # one repo, fetched once
    for member in routed.routes:
        assert_weights(member, folders["main"])
    with pytest.raises(hub.ModelNotFoundError, match="revision 'nope' not found"):
        load("toy", server, cache, revision="nope")
    with pytest.raises(ValueError, match="is a local folder, which has no revisions"):
        load(folders["main"], server, cache, revision="v1")
    with pytest.raises(ValueError, match="is a local folder, which has no revisions"):
        hub.resolve(folders["main"], revision="v1")


def test_list_pretrained_is_the_registry():
    reg = list_pretrained()
    assert reg == hub.REGISTRY and reg is not hub.REGISTRY
    assert hub.DEFAULT_MODEL in reg
    for name, e in reg.items():
        assert isinstance(e, hub.Pretrained) and e.name == name == f"{e.family}-m{e.ratio:g}"
        assert e.repo_id == f"{hub.HUB_ORG}/{e.files}" and 0 < e.ratio < 1 and e.revision
        assert e.files == name or (e.class_agnostic and hub.REGISTRY[e.files].weights is None)  # a preset
    reg.clear()
    assert hub.DEFAULT_MODEL in list_pretrained()  # a copy: callers cannot break the registry


def test_names_for():
    assert hub.names_for("camvid-m0.5") == ["camvid-m0.5"]
    assert hub.names_for("camvid") == [n for n, e in hub.REGISTRY.items() if e.family == "camvid"]
    assert hub.names_for("nope") == []


def test_families_route_separately(monkeypatch):
    entries = [
        hub._entry("toy", 0.3),
        hub._entry("toy", 0.5),
        hub._entry("toy", 0.5, "rw"),
        hub._entry("toy", 0.7, "rw"),
    ]
    monkeypatch.setattr(hub, "REGISTRY", {e.name: e for e in entries})
    assert [e.name for e in entries] == ["toy-m0.3", "toy-m0.5", "toy-rw-m0.5", "toy-rw-m0.7"]
    assert entries[2].repo_id == "torch-label-mae/toy-rw-m0.5" and entries[2].family == "toy-rw"
    assert hub.names_for("toy") == ["toy-m0.3", "toy-m0.5"]
    assert hub.names_for("toy-rw") == ["toy-rw-m0.5", "toy-rw-m0.7"]
    assert hub.names_for("toy-rw-m0.7") == ["toy-rw-m0.7"]


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch) -> dict[float, Path]:
    """``toy-m0.3`` and ``toy-m0.7`` registered, bundled, with different weights."""
    folders = {r: make_folder(tmp_path / f"toy-m{r}", seed=int(r * 10), mask_ratio=r) for r in (0.3, 0.7)}
    entries = [hub.Pretrained(f"toy-m{r}", f"acme/toy-m{r}", "main", "toy", r) for r in folders]
    register(monkeypatch, entries, {f"toy-m{r}": f for r, f in folders.items()})
    return folders


def test_dataset_name_loads_every_ratio(toy_dataset):
    c = LabelCompleter.from_pretrained("toy", device="cpu")
    assert [m.config.mask_ratio for m in c.routes] == [0.3, 0.7]
    assert c in c.routes and c.config.mask_ratio == 0.3  # nearest 0.5; ties go to the lower ratio
    for m in c.routes:
        assert_weights(m, toy_dataset[m.config.mask_ratio])
        assert not m.training


def test_dataset_name_downloads_members_not_bundled(server, cache, folders, monkeypatch):
    server.files[("acme/toy-m0.7", "main")] = read_files(folders["v1"])
    entries = [
        hub.Pretrained("toy-m0.3", REPO, "main", "toy", 0.3),
        hub.Pretrained("toy-m0.7", "acme/toy-m0.7", "main", "toy", 0.7),
    ]
    register(monkeypatch, entries)
    c = load("toy", server, cache)
    assert [m.config.mask_ratio for m in c.routes] == [0.5, 0.5]  # the files' own configs say 0.5
    assert_weights(c.routes[0], folders["main"])
    assert {p.split("/resolve/")[0] for _, p in server.requests} == {f"/{REPO}", "/acme/toy-m0.7"}


def test_route_picks_the_nearest_ratio(toy_dataset):
    c = LabelCompleter.from_pretrained("toy", device="cpu")

    @settings(deadline=None, max_examples=4 * settings().max_examples)  # cheap: no forward pass
    @given(fraction=st.floats(0, 1))
    def check(fraction):
        got = c.route(fraction)
        assert got in c.routes
        ratio = got.config.mask_ratio
        assert abs(ratio - fraction) <= min(abs(r - fraction) for r in (0.3, 0.7)) + 1e-9  # distances rounded
        if abs(fraction - 0.5) < 1e-10:
            assert ratio == 0.3  # a tie goes to the lower ratio

    check()
    check.hypothesis.inner_test(0.5)
    assert LabelCompleter.from_folder(toy_dataset[0.7]).route(0.1).config.mask_ratio == 0.7  # unrouted: itself


@pytest.mark.filterwarnings(r"ignore:labels\[0\] has no known pixel")  # k = 16
def test_completion_is_routed_by_hidden_fraction(toy_dataset):
    c = LabelCompleter.from_pretrained("toy", device="cpu")
    alone = {r: LabelCompleter.from_folder(f, device="cpu") for r, f in toy_dataset.items()}

    @settings(deadline=None, max_examples=max(10, settings().max_examples // 2))
    @given(order=st.permutations(range(16)), k=st.integers(1, 16), seed=st.integers(0, 2**16))
    def check(order, k, seed):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        label = rng.integers(0, 5, (32, 32)).astype(np.uint8)
        for p in order[:k]:  # hide k of the 16 patches of 8 x 8: hidden fraction k / 16
            label[(p // 4) * 8 : (p // 4) * 8 + 8, (p % 4) * 8 : (p % 4) * 8 + 8] = 255
        ratio = min((0.3, 0.7), key=lambda r: (abs(Fraction(str(r)) - Fraction(k, 16)), r))  # exact distances
        np.testing.assert_array_equal(c.complete(image, label), alone[ratio].complete(image, label))

    check()


def test_a_routed_completer_of_several_ratios_is_not_saved_as_one(toy_dataset, tmp_path):
    c = LabelCompleter.from_pretrained("toy", device="cpu")
    assert len(c.routes) == 2
    with pytest.raises(ValueError, match=r"a routed completer of 2 ratios is no one folder: .*save_hub_files"):
        c.save_pretrained(tmp_path / "one")
    assert not (tmp_path / "one").exists()
    for member in c.routes:  # as the message says
        r = member.config.mask_ratio
        hub.save_hub_files(member.model, tmp_path / str(r))
        assert_weights(LabelCompleter.from_folder(tmp_path / str(r)), toy_dataset[r])


def test_bundled_dir_needs_both_files(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "__file__", str(tmp_path / "site" / "torch_label_mae" / "hub.py"))
    assert hub.bundled_dir("toy-m0.5") is None
    wheel = tmp_path / "site" / "torch_label_mae" / "_bundled" / "toy-m0.5"
    wheel.mkdir(parents=True)
    (wheel / hub.CONFIG_NAME).write_text("{}")
    assert hub.bundled_dir("toy-m0.5") is None  # config alone is not a bundled model
    checkout = tmp_path / "site" / "hub" / "toy-m0.5"
    checkout.mkdir(parents=True)
    for f in (hub.CONFIG_NAME, hub.WEIGHTS_NAME):
        (checkout / f).write_text("x")
    assert hub.bundled_dir("toy-m0.5") == checkout  # source checkout: <repo>/hub/<name>
    (wheel / hub.WEIGHTS_NAME).write_text("x")
    assert hub.bundled_dir("toy-m0.5") == wheel  # the wheel's copy comes first


def test_routed_needs_members_of_one_label_space(tmp_path):
    a = LabelCompleter.from_folder(make_folder(tmp_path / "a"))
    b = LabelCompleter.from_folder(make_folder(tmp_path / "b", num_classes=7))
    with pytest.raises(ValueError, match="num_classes"):
        LabelCompleter.routed([a, b])
    with pytest.raises(ValueError, match="at least one"):
        LabelCompleter.routed([])
    with pytest.raises(TypeError, match=r"routed\(\) takes loaded completers, got str 'camvid-m0.5'"):
        LabelCompleter.routed([a, "camvid-m0.5"])
    for bad in ("any-m0.5", a):
        with pytest.raises(TypeError, match=r"routed\(\) takes a list of loaded completers"):
            LabelCompleter.routed(bad)


# ----------------------------------------------------------------------------------------------------
# failures: one HubError subclass each, naming what failed
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["no-such-model", "./not/a/folder", "a/b/c", "camvid-m0.9"])
def test_unknown_name_lists_the_registered_ones(name):
    with pytest.raises(hub.UnknownModelError) as e:
        LabelCompleter.from_pretrained(name)
    assert isinstance(e.value, HubError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert repr(name) in msg and "camvid" in msg
    assert all(n in msg for n in hub.REGISTRY)
    assert ("no such model folder" in msg) == ("/" in name)  # a path is told apart from a name


def test_an_empty_name_is_unknown_not_the_working_folder():
    for name in ("", "  "):
        with pytest.raises(hub.UnknownModelError, match="empty model name"):
            LabelCompleter.from_pretrained(name)


@pytest.mark.parametrize("name", ["acme/..", "acme/tiny model", "acme/-tiny", "acme/tiny!"])
def test_a_name_that_is_no_repo_id_is_unknown_not_a_network_error(name, server, cache):
    with pytest.raises(hub.UnknownModelError, match="not a registered name, a local folder"):
        load(name, server, cache)
    assert server.requests == []


def test_a_mistyped_folder_path_says_it_is_no_folder_here_either(server, cache, tmp_path, monkeypatch):
    (tmp_path / "runs" / "my-model").mkdir(parents=True)
    make_folder(tmp_path / "runs" / "my-model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hub.ModelNotFoundError, match=r"runs/my-modle.*nor is it a folder here: runs/ holds no my-mod"):
        load("runs/my-modle", server, cache)
    assert load("runs/my-model", server, cache).config == LMAEConfig.tiny(**TINY)


def test_repo_not_found(server, cache):
    with pytest.raises(hub.ModelNotFoundError, match="acme/nope.*repository not found"):
        load("acme/nope", server, cache)


def test_revision_not_found(server, cache):
    with pytest.raises(hub.ModelNotFoundError, match="revision 'v9' not found") as e:
        load(REPO, server, cache, revision="v9")
    assert REPO in str(e.value)


def test_offline_and_not_cached(server, cache):
    with pytest.raises(hub.OfflineError, match="not in the local cache") as e:
        load(REPO, server, cache, local_files_only=True)
    assert REPO in str(e.value) and server.requests == []


def test_hf_hub_offline_and_not_cached(server, cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.OfflineError, match=REPO):
        load(REPO, server, cache)
    assert server.requests == []


def test_hf_hub_offline_uses_the_cache(server, cache, folders, monkeypatch):
    from huggingface_hub import constants

    load(REPO, server, cache)
    n = len(server.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_weights(load(REPO, server, cache), folders["main"])
    assert len(server.requests) == n


def test_unreachable_endpoint(cache):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(HubError) as e:
        LabelCompleter.from_pretrained(REPO, cache_dir=cache, endpoint=endpoint)
    assert isinstance(e.value, (hub.OfflineError, hub.HubUnreachableError))
    assert REPO in str(e.value) and endpoint in str(e.value)


def test_force_download_from_an_unreachable_endpoint(cache):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(hub.HubUnreachableError) as e:
        LabelCompleter.from_pretrained(REPO, cache_dir=cache, endpoint=endpoint, force_download=True)
    assert REPO in str(e.value) and endpoint in str(e.value)


def test_hub_down(server, cache, folders):
    server.status = 503
    with pytest.raises(hub.HubServerError, match=f"{REPO}.*HTTP 503 \\(server error\\)"):  # not "offline"
        load(REPO, server, cache)
    server.status = None
    load(REPO, server, cache)
    server.status = 503
    assert_weights(load(REPO, server, cache), folders["main"])  # down, but cached


def test_endpoint_that_is_not_a_hub(server, cache):
    server.hub_headers = False
    with pytest.raises(HubError, match=REPO) as e:
        load(REPO, server, cache)
    assert isinstance(e.value, (hub.OfflineError, hub.HubUnreachableError))


@pytest.mark.parametrize("mode", ["size", "close"])
def test_truncated_transfer_is_corrupt_weights(server, cache, folders, mode):
    server.truncate = {hub.WEIGHTS_NAME: mode}
    with pytest.raises(hub.CorruptWeightsError, match=f"{REPO}.*{hub.WEIGHTS_NAME}.*truncated"):
        load(REPO, server, cache)
    server.truncate = {}
    assert_weights(load(REPO, server, cache), folders["main"])  # nothing half-written was cached


def test_truncated_file_on_the_hub_is_corrupt_weights(server, cache, folders):
    files = read_files(folders["main"])
    files[hub.WEIGHTS_NAME] = files[hub.WEIGHTS_NAME][:1000]  # served consistently: the download succeeds
    server.files[("acme/broken", "main")] = files
    with pytest.raises(hub.CorruptWeightsError, match="unreadable safetensors"):
        load("acme/broken", server, cache)


def test_weights_missing_on_the_hub_no_pickle(server, cache, folders, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    server.files[("acme/pickled", "main")] = {
        hub.CONFIG_NAME: read_files(folders["main"])[hub.CONFIG_NAME],
        "pytorch_model.bin": b"not really a pickle",
    }
    with pytest.raises(hub.ModelNotFoundError, match=f"acme/pickled.*no {hub.WEIGHTS_NAME}"):
        load("acme/pickled", server, cache)


def test_folder_with_only_a_pickle_is_refused(tmp_path, folders, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    d = tmp_path / "pickled"
    d.mkdir()
    (d / hub.CONFIG_NAME).write_bytes((folders["main"] / hub.CONFIG_NAME).read_bytes())
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(hub.ModelNotFoundError, match=hub.WEIGHTS_NAME):
        LabelCompleter.from_pretrained(d)
    (d / hub.CONFIG_NAME).unlink()
    (d / hub.WEIGHTS_NAME).write_bytes((folders["main"] / hub.WEIGHTS_NAME).read_bytes())
    with pytest.raises(hub.ModelNotFoundError, match=hub.CONFIG_NAME):
        LabelCompleter.from_pretrained(str(d))


# -- strict loading -----------------------------------------------------------------------------------
def _copy_with_state(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / hub.CONFIG_NAME).write_bytes((src / hub.CONFIG_NAME).read_bytes())
    state = load_file(str(src / hub.WEIGHTS_NAME))
    edit(state)
    save_file(state, str(dst / hub.WEIGHTS_NAME))
    return dst


def test_folder_round_trip(folders):
    c = LabelCompleter.from_pretrained(folders["main"], device="cpu")
    assert_weights(c, folders["main"])
    assert c.num_classes == 5 and not c.training


def test_extra_key_is_refused(tmp_path, folders):
    d = _copy_with_state(folders["main"], tmp_path / "extra", lambda s: s.update({"model.extra": torch.ones(2)}))
    with pytest.raises(hub.CorruptWeightsError, match=r"unexpected keys \['model.extra'\]"):
        LabelCompleter.from_pretrained(d)


def test_missing_key_is_refused(tmp_path, folders):
    d = _copy_with_state(folders["main"], tmp_path / "missing", lambda s: s.pop("model.head.weight"))
    with pytest.raises(hub.CorruptWeightsError, match=r"missing keys \['model.head.weight'\]"):
        LabelCompleter.from_pretrained(d)


def test_wrong_shape_is_refused(tmp_path, folders):
    d = _copy_with_state(folders["main"], tmp_path / "shape", lambda s: s.update({"model.head.bias": torch.zeros(3)}))
    with pytest.raises(hub.CorruptWeightsError, match="model.head.bias"):
        LabelCompleter.from_pretrained(d)


def test_truncated_local_weights(tmp_path, folders):
    d = tmp_path / "trunc"
    d.mkdir()
    (d / hub.CONFIG_NAME).write_bytes((folders["main"] / hub.CONFIG_NAME).read_bytes())
    (d / hub.WEIGHTS_NAME).write_bytes((folders["main"] / hub.WEIGHTS_NAME).read_bytes()[:-100])
    with pytest.raises(hub.CorruptWeightsError, match="unreadable safetensors"):
        LabelCompleter.from_pretrained(d)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(colour="red"), r"unknown config keys \['colour'\]"),
        (lambda d: d.update(patch_size=0), "patch_size"),
        (lambda d: d.update(num_classes="5"), "num_classes"),
        (lambda d: d.update(img_size=30), "img_size"),
        (lambda d: d.update(ignore_index=2), "ignore_index"),
        (lambda d: d.update(mask_ratio=1.5), "mask_ratio"),
    ],
)
def test_invalid_config_fails_before_the_model_is_built(tmp_path, folders, monkeypatch, edit, match):
    import torch_label_mae.completer as completer_module

    d = tmp_path / "bad"
    d.mkdir()
    cfg = json.loads((folders["main"] / hub.CONFIG_NAME).read_text())
    edit(cfg)
    (d / hub.CONFIG_NAME).write_text(json.dumps(cfg))
    (d / hub.WEIGHTS_NAME).write_bytes((folders["main"] / hub.WEIGHTS_NAME).read_bytes())
    monkeypatch.setattr(completer_module, "LMAE", lambda *a: pytest.fail("model built from an invalid config"))
    with pytest.raises(hub.CorruptWeightsError, match=match) as e:
        LabelCompleter.from_pretrained(d)
    assert "invalid config" in str(e.value) and hub.CONFIG_NAME in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_unparsable_config(tmp_path, folders, text):
    d = tmp_path / "bad"
    d.mkdir()
    (d / hub.CONFIG_NAME).write_text(text)
    (d / hub.WEIGHTS_NAME).write_bytes((folders["main"] / hub.WEIGHTS_NAME).read_bytes())
    with pytest.raises(hub.CorruptWeightsError, match="invalid config"):
        LabelCompleter.from_pretrained(d)


def test_invalid_config_from_the_hub(server, cache, folders):
    files = read_files(folders["main"])
    files[hub.CONFIG_NAME] = json.dumps({**json.loads(files[hub.CONFIG_NAME]), "depth": 3}).encode()
    server.files[("acme/badcfg", "main")] = files
    with pytest.raises(hub.CorruptWeightsError, match=r"unknown config keys \['depth'\]"):
        load("acme/badcfg", server, cache)


def test_from_pretrained_rejects_unknown_arguments(folders):
    with pytest.raises(TypeError, match="map_location"):
        LabelCompleter.from_pretrained(folders["main"], map_location="cpu")


def test_save_pretrained_round_trip(tmp_path, folders):
    c = LabelCompleter.from_folder(folders["v1"])
    c.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / hub.CONFIG_NAME).read_text()) == c.config.to_dict()
    assert_weights(LabelCompleter.from_pretrained(tmp_path / "again"), folders["v1"])


def test_a_failed_save_into_a_model_folder_leaves_it_loading(tmp_path, folders, monkeypatch):
    target = tmp_path / "model"
    LabelCompleter.from_folder(folders["v1"]).save_pretrained(target)
    bad = LabelCompleter(LMAEConfig.tiny(num_classes=5))
    with torch.no_grad():
        next(bad.model.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad.save_pretrained(target)  # huggingface_hub's mixin removed config.json before the refusal
    assert_weights(LabelCompleter.from_pretrained(target), folders["v1"])  # the old model, whole

    other = LabelCompleter(LMAEConfig.tiny(num_classes=5))  # another config: its weights need its own
    to_dict, calls = LMAEConfig.to_dict, []

    def interrupted(self):  # Ctrl-C once the new weights are in place, before their config is written
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return to_dict(self)

    monkeypatch.setattr(LMAEConfig, "to_dict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(target)
    monkeypatch.undo()
    loaded = LabelCompleter.from_pretrained(target)  # the new weights with the config that fits them
    assert loaded.config == other.config
    for k, v in other.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_wheel_bundles_the_default_and_only_registered_folders():
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11")
    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    bundled = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    names = {Path(dst).name for dst in bundled.values()}
    assert hub.DEFAULT_MODEL in names
    assert names <= set(hub.REGISTRY), "a bundled folder that is not a registered name"
    assert names == {n for n, e in hub.REGISTRY.items() if e.bundled}, "Pretrained.bundled: what the wheel holds"
    for src, dst in bundled.items():
        assert Path(src).name == Path(dst).name and dst.startswith("torch_label_mae/_bundled/")
        assert (root / src / hub.CONFIG_NAME).is_file() and (root / src / hub.WEIGHTS_NAME).is_file()
    size = sum((root / src / hub.WEIGHTS_NAME).stat().st_size for src in bundled)
    assert size < 45e6, f"bundled weights are {size / 1e6:.1f} MB; the wheel must stay under 50 MB"
