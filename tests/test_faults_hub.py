"""Faults of loading (issue #21: nothing lost, nothing hangs, nothing silently wrong).

Weights that are not floating point or not finite, configs out of range, Hub calls that fail or stall,
and folders that shadow registered names: each is refused with its own error, naming what is wrong,
before anything large is allocated, and within the call's deadline. Every server is on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_hub import REPO, HubServer, closed_port, hub_env, make_folder, read_files  # noqa: F401 (autouse)

import torch_label_mae.config as config_module
import torch_label_mae.model as model_module
from torch_label_mae import HubError, LabelCompleter, LMAEConfig, hub
from torch_label_mae.config import FLOAT_LIMITS, MAX_CONFIG_BYTES, MAX_ELEMENTS, MAX_IMG_SIZE, SIZE_LIMITS, NearestPrior
from torch_label_mae.model import LMAE

DEADLINE = 2.0  # seconds: the deadline of the Hub tests
MARGIN = 2.5  # seconds a call may take past its deadline (a busy, shared machine)


@pytest.fixture(autouse=True)
def no_download_left_behind():
    """A download abandoned at its deadline keeps its thread while huggingface_hub retries it (about 5 s
    after a trickling server stops); sharing huggingface_hub's HTTP client with the next test's transfer,
    it once cut one under load (``ReadError: Bad file descriptor``). Each test ends with them finished."""
    yield
    for t in threading.enumerate():
        if t.name.startswith("label-mae download"):
            t.join(30)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid tiny completer folder."""
    return make_folder(tmp_path_factory.mktemp("good") / "m")


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """The device type of every LMAE built during the test ("meta": the shape-only copy, no allocation)."""
    devices: list[str] = []
    init = LMAE.__init__

    def recording(self, config):
        init(self, config)
        devices.append(next(self.parameters()).device.type)

    monkeypatch.setattr(LMAE, "__init__", recording)
    return devices


def copy_with_state(src: Path, dst: Path, edit) -> Path:
    dst.mkdir(parents=True)
    (dst / hub.CONFIG_NAME).write_bytes((src / hub.CONFIG_NAME).read_bytes())
    state = load_file(str(src / hub.WEIGHTS_NAME))
    edit(state)
    save_file(state, str(dst / hub.WEIGHTS_NAME))
    return dst


# ----------------------------------------------------------------------------------------------------
# (a) weights: floating point, finite, matching the config; checked before the model is built
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.int64])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, good, built, dtype):
    def edit(s):
        s["model.head.bias"] = torch.ones_like(s["model.head.bias"]).to(dtype)

    d = copy_with_state(good, tmp_path / "m", edit)
    with pytest.raises(hub.CorruptWeightsError, match="floating point") as e:
        LabelCompleter.from_folder(d)
    msg = str(e.value)
    assert str(d / hub.WEIGHTS_NAME) in msg and "'model.head.bias'" in msg
    assert built == []  # refused from the header: not even the shape-only copy was built


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weights_that_are_not_finite_are_refused(tmp_path, good, built, value, dtype):
    def edit(s):
        for k in s:
            s[k] = s[k].to(dtype)
        s["model.norm.weight"][3] = value

    d = copy_with_state(good, tmp_path / "m", edit)
    with pytest.raises(hub.CorruptWeightsError, match="NaN or infinite") as e:
        LabelCompleter.from_folder(d)
    msg = str(e.value)
    assert str(d / hub.WEIGHTS_NAME) in msg and "'model.norm.weight'" in msg and "holds 1 " in msg
    assert "cpu" not in built  # the model itself was never built


def test_float64_weights_beyond_float32_are_refused(tmp_path, good, built):
    """The model is float32: a float64 1e300 would load as inf and fill holes with garbage."""

    def edit(s):
        for k in s:
            s[k] = s[k].double()
        s["model.head.weight"][0] = 1e300

    d = copy_with_state(good, tmp_path / "m", edit)
    with pytest.raises(hub.CorruptWeightsError, match=r"'model.head.weight' holds \d+ NaN or infinite value\(s\)"):
        LabelCompleter.from_folder(d)
    assert "cpu" not in built


def test_weights_saved_beyond_their_dtype_are_refused_before_writing(tmp_path, good):
    c = LabelCompleter.from_folder(good)
    with torch.no_grad():
        c.model.head.bias[0] = 70000.0  # beyond float16's 65504
    with pytest.raises(ValueError, match=r"head.bias: NaN or infinite values in torch.float16"):
        hub.save_hub_files(c.model, tmp_path / "half", dtype=torch.float16)
    assert not (tmp_path / "half").exists() or not any((tmp_path / "half").iterdir())
    hub.save_hub_files(c.model, tmp_path / "full")  # float32 holds it
    assert LabelCompleter.from_folder(tmp_path / "full").model.head.bias[0] == 70000.0


def test_half_precision_weights_still_load(tmp_path, good):
    d = copy_with_state(good, tmp_path / "m", lambda s: s.update({k: v.half() for k, v in s.items()}))
    c = LabelCompleter.from_folder(d, device="cpu")
    for k, v in load_file(str(d / hub.WEIGHTS_NAME)).items():
        assert torch.equal(c.state_dict()[k], v.float()), k


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.update({"model.head.bias": torch.zeros(3)}), r"'model.head.bias' has shape \[3\]"),
        (lambda s: s.update({"model.extra": torch.ones(2)}), r"unexpected keys \['model.extra'\]"),
        (lambda s: s.pop("model.norm.bias"), r"missing keys \['model.norm.bias'\]"),
    ],
)
def test_mismatched_weights_are_refused_before_the_model_is_built(tmp_path, good, built, edit, match):
    d = copy_with_state(good, tmp_path / "m", edit)
    with pytest.raises(hub.CorruptWeightsError, match=match) as e:
        LabelCompleter.from_folder(d)
    assert str(d / hub.WEIGHTS_NAME) in str(e.value) and "does not match its config" in str(e.value)
    assert built == ["meta"]  # only the shape-only copy


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_any_garbage_weights_file_is_corrupt_weights(tmp_path_factory, good, data, length):
    """Whatever the bytes (an 8-byte length that lies, a header that is not JSON, ...): CorruptWeightsError."""
    d = tmp_path_factory.mktemp("garbage")
    (d / hub.CONFIG_NAME).write_bytes((good / hub.CONFIG_NAME).read_bytes())
    prefix = b"" if length is None else length.to_bytes(8, "little")
    (d / hub.WEIGHTS_NAME).write_bytes(prefix + data)
    with pytest.raises(hub.CorruptWeightsError, match="unreadable safetensors file") as e:
        LabelCompleter.from_folder(d)
    assert str(d / hub.WEIGHTS_NAME) in str(e.value)
    if len(prefix + data) < 8:  # too short for a header's length
        assert "truncated or not safetensors" in str(e.value)


def test_header_entries_that_lie_are_refused(tmp_path, good):
    raw = (good / hub.WEIGHTS_NAME).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    cases = {
        "shape": {**header[name], "shape": [10**9, 10**9]},
        "offsets": {**header[name], "data_offsets": [0, len(raw) * 2]},
        "negative": {**header[name], "shape": [-1]},
    }
    for why, entry in cases.items():
        text = json.dumps({**header, name: entry}).encode()
        (tmp_path / why).mkdir()
        (tmp_path / why / hub.CONFIG_NAME).write_bytes((good / hub.CONFIG_NAME).read_bytes())
        (tmp_path / why / hub.WEIGHTS_NAME).write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
        with pytest.raises(hub.CorruptWeightsError, match=f"unreadable safetensors file.*{name}"):
            LabelCompleter.from_folder(tmp_path / why)


def test_every_bundled_model_passes_the_checks_without_being_built(built):
    for name in hub.REGISTRY:
        folder = hub.bundled_dir(name)
        if folder is None:
            continue
        config = LMAEConfig.from_json(folder / hub.CONFIG_NAME)
        header = hub.read_weights_header(folder / hub.WEIGHTS_NAME)
        assert {k: s for k, (_, s) in header.items()} == {f"model.{k}": v for k, v in LMAE.state_shapes(config).items()}
    assert set(built) <= {"meta"}


# ----------------------------------------------------------------------------------------------------
# (b) configs: every size bounded, every float finite, the file bounded; refused before allocation
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError("a model was built from an invalid config")

    monkeypatch.setattr(model_module.LMAE, "__init__", boom)


def config_dir(root: Path, cfg: dict | str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = cfg if isinstance(cfg, (str, bytes)) else json.dumps(cfg)
    (root / hub.CONFIG_NAME).write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    (root / hub.WEIGHTS_NAME).write_bytes(b"never read")
    return root


def refused(folder: Path, *words: str) -> str:
    """Load ``folder``, expect an invalid config naming the file and ``words``; returns the message."""
    t0 = time.perf_counter()
    with pytest.raises(hub.CorruptWeightsError) as e:
        LabelCompleter.from_folder(folder)
    assert time.perf_counter() - t0 < 1.0, "a refused config must be refused at once"
    msg = str(e.value)
    assert "invalid config" in msg and str(folder / hub.CONFIG_NAME) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("encoder_depth", 10000, "[1, 64]"),
        ("encoder_dim", 10**6, "[1, 8192]"),
        ("decoder_dim", 10**6, "[1, 8192]"),
        ("num_classes", 10**6, "[1, 4096]"),
        ("img_size", 10**6, f"[1, {MAX_IMG_SIZE}]"),
        ("img_size", [224, 10**6], f"[1, {MAX_IMG_SIZE}]"),
        ("mlp_ratio", math.nan, "finite"),
        ("prior_beta", math.inf, "finite"),
        ("prior_scale", -math.inf, "finite"),
        ("mlp_ratio", 1e9, "(0, 16]"),
        ("encoder_heads", 10**5, "[1, 256]"),
        ("patch_size", 1024, "[1, 64]"),
        ("prior_sweeps", 10**9, "[0, 100000]"),
    ],
)
def test_observed_configs_are_refused(tmp_path, good, no_model, field, value, allowed):
    cfg = {**json.loads((good / hub.CONFIG_NAME).read_text()), field: value}  # prior_*: version 1's flat keys
    refused(config_dir(tmp_path / "m", cfg), f"LMAEConfig.{field.replace('prior_', 'prior.')}=", allowed)


def with_field(cfg: dict, field: str, value) -> dict:
    """``cfg`` with ``field`` set to ``value``; ``prior.<name>`` goes into a random-walk prior section."""
    if field.startswith("prior."):
        return {**cfg, "prior": {"kind": "random_walk", field.removeprefix("prior."): value}}
    return {**cfg, field: value}


_SETTINGS = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(field=st.sampled_from(sorted(SIZE_LIMITS)), data=st.data())
def test_any_size_out_of_range_is_refused_before_allocation(tmp_path_factory, good, no_model, field, data):
    lo, hi = SIZE_LIMITS[field]
    value = data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1, max_value=10**30)))
    cfg = with_field(json.loads((good / hub.CONFIG_NAME).read_text()), field, value)
    refused(config_dir(tmp_path_factory.mktemp("cfg"), cfg), f"LMAEConfig.{field}=", f"[{lo}, {hi}]")


@_SETTINGS
@given(
    field=st.sampled_from(sorted(FLOAT_LIMITS)),
    value=st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, True, "1.0", [1.0]]),
        st.floats(max_value=-1e-9, allow_nan=False),
        st.floats(min_value=2e6, allow_infinity=False),
    ),
)
def test_any_float_not_finite_or_out_of_range_is_refused(tmp_path_factory, good, no_model, field, value):
    cfg = with_field(json.loads((good / hub.CONFIG_NAME).read_text()), field, value)
    msg = refused(config_dir(tmp_path_factory.mktemp("cfg"), cfg), f"LMAEConfig.{field}=")
    assert "finite" in msg or "must be in" in msg or "None or" in msg


@pytest.mark.parametrize("img_size", [[[224]], "224", 224.0, True, [224], [224, 224, 224], [224.0, 224]])
def test_img_size_must_be_ints(tmp_path, good, no_model, img_size):
    cfg = {**json.loads((good / hub.CONFIG_NAME).read_text()), "img_size": img_size}
    refused(config_dir(tmp_path / "m", cfg), "LMAEConfig.img_size=", "int")


def test_sizes_each_in_range_but_too_large_together(tmp_path, good, no_model):
    cfg = json.loads((good / hub.CONFIG_NAME).read_text())
    cfg.update(encoder_dim=8192, encoder_heads=64, encoder_depth=64)
    refused(config_dir(tmp_path / "m", cfg), "MAX_ELEMENTS", f"{MAX_ELEMENTS:,}")


def test_positions_built_at_load_are_bounded_by_the_config(tmp_path, good, no_model):
    """The sin-cos positions are built, not read: a config of a few small tensors must not ask for GiBs."""
    cfg = json.loads((good / hub.CONFIG_NAME).read_text())
    cfg.update(img_size=256, patch_size=1, encoder_dim=4, encoder_heads=1, decoder_dim=8192, decoder_heads=1)
    msg = refused(config_dir(tmp_path / "m", cfg), "LMAEConfig.img_size=256", "65536 patches", "MAX_POSITIONS")
    assert msg.count(str(tmp_path / "m" / hub.CONFIG_NAME)) == 1  # the file named once


def test_bad_class_names_and_bools(tmp_path, good, no_model):
    base = json.loads((good / hub.CONFIG_NAME).read_text())
    refused(config_dir(tmp_path / "a", {**base, "class_names": [1, 2, 3, 4, 5]}), "class_names")
    msg = refused(config_dir(tmp_path / "b", {**base, "class_names": ["x" * 10**4] * 5}), "class_names", "256")
    assert len(msg) < 500  # the value is cut, not echoed whole
    refused(config_dir(tmp_path / "c", {**base, "mlp_ratio": True}), "mlp_ratio", "finite number")
    refused(config_dir(tmp_path / "d", {**base, "background_index": 1.5}), "background_index")


@pytest.mark.parametrize(
    "text, words",
    [
        ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
        ('{"class_names": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested too deeply"]),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, ["nested too deeply"]),
        ("[1, 2]", ["JSON object"]),
        ("null", ["JSON object"]),
        ('"config"', ["JSON object"]),
        ("{not json", ["not valid JSON"]),
        ("", ["not valid JSON"]),
        ('{"num_classes": ' + "9" * 5000 + "}", ["not valid JSON"]),
        (b"\xff\xfe{}", ["not valid JSON"]),
    ],
)
def test_unparsable_configs(tmp_path, no_model, text, words):
    refused(config_dir(tmp_path / "m", text), *words)


def test_config_file_size_is_bounded_before_parsing(tmp_path, good, no_model, monkeypatch):
    cfg = json.loads((good / hub.CONFIG_NAME).read_text())
    d = config_dir(tmp_path / "m", json.dumps(cfg) + " " * MAX_CONFIG_BYTES)
    monkeypatch.setattr(config_module.json, "loads", lambda *a, **k: pytest.fail("a too-large config was parsed"))
    refused(d, f"at most {MAX_CONFIG_BYTES} bytes")


@settings(max_examples=15)
@given(
    dims=st.tuples(st.sampled_from([8, 16, 24]), st.sampled_from([8, 16])),
    depths=st.tuples(st.integers(1, 2), st.integers(0, 2)),
    mlp_ratio=st.floats(0.25, 4.0),
    ips=st.booleans(),
    label_prior=st.booleans(),
)
def test_num_elements_is_exact(dims, depths, mlp_ratio, ips, label_prior):
    cfg = LMAEConfig(
        img_size=(16, 24),
        patch_size=8,
        num_classes=3,
        encoder_dim=dims[0],
        encoder_heads=2,
        decoder_dim=dims[1],
        decoder_heads=2,
        encoder_depth=depths[0],
        decoder_depth=depths[1],
        mlp_ratio=mlp_ratio,
        ips=ips,
        prior=NearestPrior() if label_prior else None,
    )
    m = LMAE(cfg)
    assert cfg.num_elements() == sum(t.numel() for t in [*m.parameters(), *m.buffers()])
    assert LMAE.state_shapes(cfg) == {k: tuple(v.shape) for k, v in m.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# (c) Hub calls: a deadline, and one error class per kind of failure
# ----------------------------------------------------------------------------------------------------
class SilentServer:
    """Accepts connections on 127.0.0.1 (the kernel's backlog) and never answers."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.sock.close()


class TrickleServer(HubServer):
    """A Hub whose weights trickle: ``chunk`` bytes every ``every`` seconds (the rest answer at once)."""

    def __init__(self, files, chunk: int = 64, every: float = 0.2):
        super().__init__(files)
        self.chunk, self.every, self.stopped = chunk, every, threading.Event()

    def _answer(self, h, head: bool) -> None:
        if head or not h.path.endswith(hub.WEIGHTS_NAME):
            return super()._answer(h, head)
        real, server = h.wfile, self

        class Slow:
            def write(self, b):
                for i in range(0, len(b), server.chunk):
                    if server.stopped.wait(server.every):
                        raise OSError("server stopped")
                    real.write(b[i : i + server.chunk])
                    real.flush()
                return len(b)

            def flush(self):
                real.flush()

        h.wfile = Slow()
        try:
            super()._answer(h, head)
        finally:
            h.wfile = real

    def stop(self) -> None:
        self.stopped.set()
        super().stop()


@pytest.fixture
def files(good) -> dict:
    return {(REPO, "main"): read_files(good)}


def timed(call, error, *words):
    """Run ``call``; expect ``error`` with ``words`` (and the repo) in its message; return the seconds it took."""
    t0 = time.monotonic()
    with pytest.raises(error) as e:
        call()
    took = time.monotonic() - t0
    msg = str(e.value)
    for w in (REPO, *words):
        assert w in msg, (w, msg)
    assert isinstance(e.value, HubError)
    return took


def fetch(endpoint: str, cache: Path, **kw):
    return lambda: LabelCompleter.from_pretrained(REPO, cache_dir=cache, endpoint=endpoint, device="cpu", **kw)


def test_server_that_never_answers_times_out(tmp_path):
    with SilentServer() as url:
        took = timed(fetch(url, tmp_path, timeout=DEADLINE), hub.HubTimeoutError, "timed out", f"{DEADLINE:g} s", url)
    assert took < DEADLINE + MARGIN


def test_server_that_trickles_times_out(tmp_path, files):
    srv = TrickleServer(files).start()
    try:
        took = timed(fetch(srv.url, tmp_path, timeout=DEADLINE), hub.HubTimeoutError, "timed out", hub.WEIGHTS_NAME)
    finally:
        srv.stop()
    assert DEADLINE - 0.1 <= took < DEADLINE + MARGIN
    assert srv.gets(hub.WEIGHTS_NAME) >= 1  # it was the transfer, not the metadata, that ran out of time


def test_timeout_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.TIMEOUT_ENV, "1.5")
    with SilentServer() as url:
        took = timed(lambda: hub.download(REPO, cache_dir=tmp_path, endpoint=url), hub.HubTimeoutError, "1.5 s")
    assert took < 1.5 + MARGIN
    assert isinstance(hub.HubTimeoutError("x"), TimeoutError)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "10", True])
def test_invalid_timeouts_are_refused(bad, monkeypatch):
    with pytest.raises(ValueError, match="timeout=.*positive, finite"):
        hub.resolve(REPO, timeout=bad)
    with pytest.raises(ValueError, match="timeout=.*positive, finite"):
        LabelCompleter.from_pretrained(REPO, timeout=bad)
    monkeypatch.setenv(hub.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=hub.TIMEOUT_ENV):
        hub.download(REPO)


@pytest.mark.parametrize(
    "status, error, words",
    [
        (404, hub.ModelNotFoundError, ["not found", "HTTP 404"]),
        (500, hub.HubServerError, ["server error", "HTTP 500"]),
        (502, hub.HubServerError, ["server error", "HTTP 502"]),
    ],
)
def test_http_errors_are_told_apart(tmp_path, files, status, error, words):
    srv = HubServer(files).start()
    srv.status = status
    try:
        took = timed(fetch(srv.url, tmp_path, timeout=DEADLINE), error, *words, srv.url)
    finally:
        srv.stop()
    assert took < DEADLINE + MARGIN
    assert not isinstance(error, hub.OfflineError)


def test_connection_refused_is_unreachable(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    took = timed(fetch(url, tmp_path, timeout=DEADLINE), hub.HubUnreachableError, "unreachable", url)
    assert took < DEADLINE + MARGIN


def test_the_quick_network_probe_goes_where_the_download_goes(monkeypatch):
    """Behind a proxy the Hub's host may not resolve at all; the probe then asks the proxy, as
    huggingface_hub's HTTP client does (HTTP_PROXY / HTTPS_PROXY, NO_PROXY honoured)."""
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        proxy = f"http://127.0.0.1:{listening.getsockname()[1]}"
        hidden = "http://hub.example.invalid:8080"  # resolves nowhere: reachable only through the proxy
        assert "gaierror" in hub._unreachable(hidden, 2.0)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        assert hub._unreachable(hidden, 2.0) is None
        monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{listening.getsockname()[1]}")  # without a scheme
        assert hub._unreachable(hidden, 2.0) is None
        monkeypatch.setenv("NO_PROXY", "hub.example.invalid")
        assert "gaierror" in hub._unreachable(hidden, 2.0)
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.setenv("ALL_PROXY", proxy)  # for every scheme
        assert hub._unreachable(hidden, 2.0) is None
        monkeypatch.delenv("ALL_PROXY")
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    assert hub._unreachable(hidden, 2.0).endswith(f"(through the proxy {dead})")


@pytest.mark.parametrize(
    "failure", [socket.gaierror(-2, "Name or service not known"), ConnectionRefusedError(111, "Connection refused")]
)
def test_no_network_fails_at_once_not_after_retries(tmp_path, monkeypatch, failure):
    """A machine without network (unknown host name, nothing listening) gets its answer in well under
    a second, not after huggingface_hub's five retries (23 s), even with a long deadline."""

    def no_network(*args, **kwargs):
        raise failure

    monkeypatch.setattr(socket, "create_connection", no_network)
    call = fetch("https://hub.example", tmp_path, timeout=60)
    took = timed(call, hub.HubUnreachableError, "unreachable", failure.strerror, "not in the local cache")
    assert took < 2


def test_offline_is_offline(tmp_path, files, monkeypatch):
    from huggingface_hub import constants

    srv = HubServer(files).start()
    try:
        took = timed(fetch(srv.url, tmp_path, timeout=DEADLINE, local_files_only=True), hub.OfflineError, "offline")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        took += timed(fetch(srv.url, tmp_path, timeout=DEADLINE), hub.OfflineError, "offline", "HF_HUB_OFFLINE")
        assert srv.requests == []
    finally:
        srv.stop()
    assert took < DEADLINE


def test_a_good_hub_within_the_deadline(tmp_path, files, good):
    srv = HubServer(files).start()
    try:
        c = fetch(srv.url, tmp_path, timeout=30)()
    finally:
        srv.stop()
    assert torch.equal(c.state_dict()["model.head.bias"], load_file(str(good / hub.WEIGHTS_NAME))["model.head.bias"])


# ----------------------------------------------------------------------------------------------------
# (d) a folder named like a registered model shadows it only when it is a model
# ----------------------------------------------------------------------------------------------------
def test_empty_folder_does_not_shadow_a_registered_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = hub.DEFAULT_MODEL
    (tmp_path / name).mkdir()
    with pytest.warns(UserWarning, match=f"using the registered model '{name}'"):
        assert hub.resolve(name) == hub.bundled_dir(name)
    with pytest.warns(UserWarning, match="holds no config.json and no model.safetensors"):
        c = LabelCompleter.from_pretrained(name, device="cpu")
    assert c.config == LMAEConfig.from_json(hub.bundled_dir(name) / hub.CONFIG_NAME)


def test_partial_folder_does_not_shadow_a_registered_name_or_family(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = hub.DEFAULT_MODEL
    family = hub.REGISTRY[name].family
    for folder in (name, family):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / hub.CONFIG_NAME).write_text("{}")
    with pytest.warns(UserWarning, match="holds no model.safetensors"):
        c = LabelCompleter.from_pretrained(family, device="cpu")
    want = [LMAEConfig.from_json(hub.bundled_dir(n) / hub.CONFIG_NAME) for n in hub.names_for(family)]
    assert [m.config for m in c.routes] == want and name in hub.names_for(family)


def test_explicit_path_or_unregistered_partial_folder_still_errors(tmp_path, monkeypatch, good):
    monkeypatch.chdir(tmp_path)
    (tmp_path / hub.DEFAULT_MODEL).mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / hub.WEIGHTS_NAME).write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(hub.ModelNotFoundError, match="holds no config.json and no model.safetensors"):
            LabelCompleter.from_pretrained(f"./{hub.DEFAULT_MODEL}")
        with pytest.raises(hub.ModelNotFoundError, match=f"mine is a folder but holds no {hub.CONFIG_NAME}$"):
            hub.resolve("mine")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(hub.ModelNotFoundError, match="pytorch_model.bin is not read: weights load from safetensors"):
        hub.resolve("pickled")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ is the home folder
    LabelCompleter.from_folder(good).save_pretrained(tmp_path / "models" / "m")
    assert hub.resolve("~/models/m") == tmp_path / "models" / "m"
    with pytest.raises(hub.UnknownModelError, match=r"'~/models/m/config.json' is a file: give the folder"):
        hub.resolve("~/models/m/config.json")
    for path in (str(tmp_path / "nowhere"), "./nowhere", "a/b/c", "~/nowhere"):
        with pytest.raises(hub.UnknownModelError, match=f"no such model folder '{path}': it does not exist\\. Reg"):
            hub.resolve(path)


def test_complete_folder_named_like_a_registered_model_is_used(tmp_path, monkeypatch, good):
    monkeypatch.chdir(tmp_path)
    name = hub.DEFAULT_MODEL
    (tmp_path / name).mkdir()
    for f in (hub.CONFIG_NAME, hub.WEIGHTS_NAME):
        (tmp_path / name / f).write_bytes((good / f).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = LabelCompleter.from_pretrained(name, device="cpu")
    assert c.num_classes == 5  # the folder's tiny model, not the registered one
