"""Pretrained names, where their files live, and downloads (the only module that touches the network).

A name is ``<family>-m<ratio>`` (e.g. ``camvid-m0.5``), where the family is the dataset, or the
dataset and a variant (``camvid-rw``: the random-walk label prior); a bare ``<family>`` means every
ratio of that family (for multi-ratio routing). ``any-m0.5`` is class-agnostic (labels of any class
list), and the dataset presets ``voc-m0.5``, ``cityscapes-m0.5``, ``ade20k-m0.5`` are its files with a
label set (:mod:`torch_label_mae.label_sets`). Resolution order for a registered name: the copy bundled in
the package (offline, no network), then the Hub repo at the registered revision via ``hf_hub_download``
(which caches). Any other string is a local folder or a Hub repo id ``owner/name``.

Hub failures become one :class:`HubError` subclass each, with a message that says what to do:
:class:`ModelNotFoundError` (HTTP 404 / 401: no such repo, revision or file), :class:`HubServerError`
(HTTP 5xx), :class:`HubUnreachableError` (connection refused, DNS, not a Hub), :class:`HubTimeoutError`
(the call's deadline passed), :class:`OfflineError` (``local_files_only`` or ``HF_HUB_OFFLINE`` and not
cached) and :class:`CorruptWeightsError` (a file arrived truncated, or is unreadable or invalid).

Every Hub call has an overall deadline: ``timeout`` seconds (argument of :func:`resolve`,
:func:`download` and ``LabelCompleter.from_pretrained``), else the ``LABEL_MAE_HUB_TIMEOUT`` environment
variable, else :data:`DEFAULT_TIMEOUT`. It bounds the whole call, a server that never answers or one that
trickles bytes included; a partial download stays in the cache and resumes on the next call.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABEL_SET_NAME = "label_set.json"  # a completer's label set, beside its config (LabelCompleter.label_set)
HUB_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, LABEL_SET_NAME, "README.md"})  # what a model folder holds
HUB_ORG = "torch-label-mae"
DEFAULT_TIMEOUT = 120.0  # seconds for a whole Hub call (both files), unless timeout= or LABEL_MAE_HUB_TIMEOUT
TIMEOUT_ENV = "LABEL_MAE_HUB_TIMEOUT"
REQUEST_TIMEOUT = 10.0  # seconds huggingface_hub waits for the answer to one metadata request (etag_timeout)
MAX_HEADER_BYTES = 16 << 20  # the JSON header of a safetensors file (a 64-block model's is under 1 MB)
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtypes accepted for weights: bytes each


@dataclass(frozen=True)
class Pretrained:
    """A registered model: its name, Hub repo and revision, dataset, training mask ratio and variant
    (``""`` for the dataset's default family).

    ``agnostic``: the weights are a class-agnostic model (:mod:`torch_label_mae.slots`): it takes labels
    of any class list. ``weights``: the registered name whose files are loaded (None: its own; a preset
    such as ``voc-m0.5`` loads ``any-m0.5``'s); ``label_set``: the name of the
    :data:`~torch_label_mae.label_sets.LABEL_SETS` entry the completer carries (class names, colours,
    missing and void indices; see :mod:`torch_label_mae.label_sets`)."""

    name: str
    repo_id: str
    revision: str
    dataset: str
    ratio: float
    variant: str = ""
    bundled: bool = False  # shipped inside the wheel (pyproject's force-include), so it loads offline
    agnostic: bool = False
    weights: str | None = None
    label_set: str | None = None

    @property
    def family(self) -> str:
        """``<dataset>`` or ``<dataset>-<variant>``: the name less its ratio."""
        return f"{self.dataset}-{self.variant}" if self.variant else self.dataset

    @property
    def class_agnostic(self) -> bool:
        """Whether the name loads a class-agnostic model (labels of any class list, or of its label set)."""
        return self.agnostic

    @property
    def files(self) -> str:
        """The registered name whose files are loaded: ``weights``, else its own."""
        return self.weights or self.name

    @property
    def offline(self) -> bool:
        """Whether its files are bundled (its own, or those of ``weights``), so that it loads offline."""
        if self.weights is None:
            return self.bundled
        files = REGISTRY.get(self.weights)
        return files is not None and files.bundled


def _entry(
    dataset: str,
    ratio: float,
    variant: str = "",
    revision: str = "main",
    bundled: bool = False,
    agnostic: bool = False,
) -> Pretrained:
    name = f"{dataset}-{variant}-m{ratio:g}" if variant else f"{dataset}-m{ratio:g}"
    return Pretrained(name, f"{HUB_ORG}/{name}", revision, dataset, ratio, variant, bundled, agnostic)


def _preset(label_set: str, weights: Pretrained) -> Pretrained:
    """``<label set>-m<ratio>``: the class-agnostic ``weights`` with a label set (no files of its own)."""
    name = f"{label_set}-m{weights.ratio:g}"
    return Pretrained(
        name,
        weights.repo_id,
        weights.revision,
        label_set,
        weights.ratio,
        agnostic=True,
        weights=weights.name,
        label_set=label_set,
    )


AGNOSTIC_MODEL = "any-m0.5"  # the class-agnostic model: the presets' weights, and what refusals point to
_ANY = _entry("any", 0.5, bundled=True, agnostic=True)
REGISTRY: dict[str, Pretrained] = {
    e.name: e
    for e in (
        _entry("camvid", 0.5, bundled=True),
        _entry("camvid", 0.5, "rw"),
        _entry("ccp", 0.5),
        _entry("ccp", 0.5, "rw", bundled=True),
        _ANY,
        *(_preset(s, _ANY) for s in ("voc", "cityscapes", "ade20k")),
    )
}
DEFAULT_MODEL = AGNOSTIC_MODEL  # the class-agnostic model: any class list, bundled


class HubError(RuntimeError):
    """Base class of every failure to find or fetch pretrained weights."""


class UnknownModelError(HubError, ValueError):
    pass


class ModelNotFoundError(HubError):
    """The repo, revision or file does not exist on the Hub."""


class OfflineError(HubError):
    """Offline (or ``local_files_only``) and the files are not in the cache."""


class HubUnreachableError(HubError):
    """The Hub endpoint could not be reached (connection refused, DNS), or it is not a Hub."""


class HubServerError(HubError):
    """The Hub answered with a server error (HTTP 5xx), after huggingface_hub's retries."""


class HubTimeoutError(HubError, TimeoutError):
    """The Hub call did not finish within its deadline (``timeout`` / ``LABEL_MAE_HUB_TIMEOUT``)."""


class CorruptWeightsError(HubError):
    """A weights or config file is truncated, unreadable or invalid (a config out of range, weights
    that are not floating point or not finite, or that do not match their config)."""


def list_pretrained() -> dict[str, Pretrained]:
    """Registered names -> :class:`Pretrained` (repo id, revision, dataset, ratio; whether it is
    class-agnostic, ``class_agnostic``, and the label set it carries, ``label_set``)."""
    return dict(REGISTRY)


def bundled_dir(name: str) -> Path | None:
    """The folder of a bundled copy of ``name`` (wheel: ``torch_label_mae/_bundled``; source checkout:
    ``hub/``), or None."""
    here = Path(__file__).resolve().parent
    for base in (here / "_bundled", here.parent / "hub"):
        if model_folder(base / name) is not None:
            return base / name
    return None


def names_for(name: str) -> list[str]:
    """A family (``"camvid"``, ``"camvid-rw"``) -> every registered ratio of it; a full name -> itself."""
    if name in REGISTRY:
        return [name]
    group = sorted((e for e in REGISTRY.values() if e.family == name), key=lambda e: e.ratio)
    return [e.name for e in group]


def _unknown(name: str) -> UnknownModelError:
    families = sorted({e.family for e in REGISTRY.values()})
    path = name.startswith(("/", ".", "~")) or name.count("/") > 1  # not a name nor a repo id 'owner/name'
    what = f"unknown model {name!r}: not a registered name, a local folder with {CONFIG_NAME} + {WEIGHTS_NAME}, "
    what += "or a Hub repo id 'owner/name'"
    if Path(name).expanduser().is_file():
        what = f"{name!r} is a file: give the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}"
    elif path:
        what = f"no such model folder {name!r}: it does not exist"
    return UnknownModelError(f"{what}. Registered: {sorted(REGISTRY)} (or a family for all its ratios: {families})")


def model_folder(path: str | os.PathLike) -> Path | None:
    """``Path(path)`` when it is a folder holding both ``config.json`` and ``model.safetensors``, else None."""
    p = Path(path)
    return p if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file() else None


def local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The local model folder ``name_or_path`` means, or None when it means no folder.

    A folder is a model only when it holds both files. An incomplete folder whose name is a registered
    name or family (say an empty ``camvid-m0.5/`` in the working directory) does not shadow the registered
    model: it is ignored with a warning (write ``./camvid-m0.5`` to mean the folder). Any other incomplete
    folder is :class:`ModelNotFoundError` naming the file it lacks. ``~`` is the home folder. An empty
    name is :class:`UnknownModelError` (``Path("")`` would be the working folder)."""
    if not str(name_or_path).strip():
        raise UnknownModelError(f"empty model name {str(name_or_path)!r}: give a registered name, folder or repo id")
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        return None
    if model_folder(p) is not None:
        return p
    missing = " and no ".join(f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (p / f).is_file())
    name = str(name_or_path)
    if names_for(name):
        warnings.warn(f"the folder {p} holds no {missing}: using the registered model {name!r} instead", stacklevel=3)
        return None
    pickled = [f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth")]
    hint = (
        f"; {', '.join(sorted(pickled))} is not read: weights load from safetensors only (a pickle can run code), "
        "so convert it with safetensors.torch.save_file where you trust it"
        if pickled
        else ""
    )
    raise ModelNotFoundError(f"{p} is a folder but holds no {missing}{hint}")


def hub_timeout(timeout: float | None = None) -> float:
    """The deadline in seconds of one Hub call: ``timeout``, else ``LABEL_MAE_HUB_TIMEOUT``, else
    :data:`DEFAULT_TIMEOUT`. ``ValueError`` unless it is a positive, finite number."""
    source = "timeout"
    if timeout is None:
        env = os.environ.get(TIMEOUT_ENV, "").strip()
        if not env:
            return DEFAULT_TIMEOUT
        source = TIMEOUT_ENV
        try:
            timeout = float(env)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={env!r}: must be a number of seconds") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise ValueError(f"{source}={timeout!r}: must be a positive, finite number of seconds")
    return float(timeout)


def resolve(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
    endpoint: str | None = None,
    force_download: bool = False,
    timeout: float | None = None,
) -> Path:
    """Return a local folder holding ``config.json`` and ``model.safetensors`` for ``name_or_path``.

    ``timeout``: the deadline of a download in seconds (see :func:`hub_timeout`)."""
    folder = local_folder(name_or_path)
    if folder is not None and revision is not None:
        raise ValueError(f"{folder} is a local folder, which has no revisions; revision= is for Hub repos")
    if folder is not None:
        return folder
    name = str(name_or_path)
    hub_kw = dict(
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        endpoint=endpoint,
        force_download=force_download,
        timeout=timeout,
    )
    entry = REGISTRY.get(name)
    if entry is not None:
        entry = REGISTRY.get(entry.files, entry)  # a preset: the files of its weights
        if revision in (None, entry.revision):
            local = bundled_dir(entry.name)
            if local is not None:
                return local
        return download(entry.repo_id, revision=revision or entry.revision, **hub_kw)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists() and _repo_id(name):
        try:
            return download(name, revision=revision, **hub_kw)
        except HubError as e:
            parent = Path(name).parent
            if not parent.is_dir():
                raise
            # 'runs/my-model' where runs/ is a folder here: perhaps a folder's name mistyped
            raise type(e)(f"{e} (nor is it a folder here: {parent}/ holds no {Path(name).name})") from None
    raise _unknown(name)


def _repo_id(name: str) -> bool:
    """Whether ``name`` is a valid Hub repo id (``owner/name``: letters, digits, ``-_.``, no ``..``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


class _Cancelled(Exception):
    """Raised inside the download thread once its deadline has passed."""


class _Download:
    """The files of a repo (config, label set when it has one, weights), fetched by ``hf_hub_download``
    in a thread that the caller waits for until the deadline. Progress updates past the deadline raise
    :class:`_Cancelled`, so an abandoned transfer stops at its next chunk (or at huggingface_hub's own
    socket timeouts) rather than running on."""

    def __init__(self, repo_id: str, deadline: float, **kwargs):
        self.repo_id, self.deadline, self.kwargs = repo_id, deadline, kwargs
        self.filename = CONFIG_NAME  # the file being fetched
        self.paths: list[str] = []
        self.config = None  # the downloaded config, once checked
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.cancelled.is_set() or time.monotonic() > self.deadline:
            raise _Cancelled()

    def progress_class(self):
        """A huggingface_hub progress bar whose updates check the deadline (None: not supported)."""
        import inspect

        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import tqdm as hf_tqdm

        if "tqdm_class" not in inspect.signature(hf_hub_download).parameters:  # pragma: no cover - old versions
            return None
        job = self

        class DeadlineTqdm(hf_tqdm):
            def update(self, n=1):
                job.check()
                return super().update(n)

        return DeadlineTqdm

    def lacks_label_set(self, e: BaseException) -> bool:
        """Whether ``hf_hub_download``'s "entry not found" ``e`` for ``label_set.json`` means the repo has
        none: the Hub said so, or the cache recorded that it did. A request that failed online (the same
        exception class when the file is not cached) is not that, and is raised; a cache filled before label
        sets were fetched, read offline, is loaded without one, with a warning."""
        from huggingface_hub import constants, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
            return True  # the Hub answered 404 for this file
        if any(getattr(getattr(c, "response", None), "status_code", None) == 404 for c in _causes(e)):
            return True  # a plain 404, without the Hub's error code (a mirror)
        if not isinstance(e, LocalEntryNotFoundError):
            return False
        kw = {k: self.kwargs.get(k) for k in ("cache_dir", "revision")}
        if try_to_load_from_cache(self.repo_id, LABEL_SET_NAME, **kw) is not None:
            return True  # the cache recorded the Hub's 404 (a cached file would have been returned)
        if not (self.kwargs.get("local_files_only") or constants.HF_HUB_OFFLINE):
            return False  # online, and the request failed: an error, not "no label set"
        # offline, and never asked for
        warnings.warn(
            f"{self.repo_id}: {LABEL_SET_NAME} is not in the local cache (a download of an earlier "
            "version): loaded without a label set; load it once online to fetch it",
            stacklevel=2,
        )
        return True

    def run(self) -> None:
        """The config (checked before anything else is fetched), the label set when the repo has one
        (``save_pretrained`` / ``push_to_hub`` write it), then the weights."""
        from huggingface_hub import hf_hub_download

        try:
            progress = self.progress_class()
            extra = {"tqdm_class": progress} if progress is not None else {}
            for filename in (CONFIG_NAME, LABEL_SET_NAME, WEIGHTS_NAME):
                self.check()
                self.filename = filename
                etag_timeout = max(min(REQUEST_TIMEOUT, self.deadline - time.monotonic()), 0.1)
                try:
                    path = hf_hub_download(
                        self.repo_id,
                        filename,
                        etag_timeout=etag_timeout,
                        library_name="torch-label-mae",
                        **self.kwargs,
                        **extra,
                    )
                except Exception as e:
                    if filename != LABEL_SET_NAME or not self.lacks_label_set(e):
                        raise
                    continue  # a model without a label set
                if filename == CONFIG_NAME:  # each file checked before the next is fetched
                    self.config = read_config(Path(path))
                elif filename == LABEL_SET_NAME:
                    load_label_set_file(Path(path).parent, self.config)
                self.paths.append(path)
        except BaseException as e:  # handed to the waiting thread
            self.error = e


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
    endpoint: str | None = None,
    force_download: bool = False,
    timeout: float | None = None,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a Hub repo (cached); returns their folder.

    ``endpoint`` defaults to the ``HF_ENDPOINT`` environment variable read at call time. ``timeout``: the
    deadline of the whole call in seconds (see :func:`hub_timeout`); past it, :class:`HubTimeoutError`.
    """
    if force_download and (local_files_only or _offline()):
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        raise ValueError(f"force_download=True and {why} contradict each other")
    seconds = hub_timeout(timeout)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    where = f"{repo_id}@{revision or 'main'}"
    host = endpoint or "https://huggingface.co"
    if not local_files_only and not _offline():
        problem = _unreachable(host, min(seconds, REQUEST_TIMEOUT))
        if problem is not None:  # no network: the cache, or an error now instead of after retries
            try:
                return download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True, timeout=seconds)
            except OfflineError:
                raise HubUnreachableError(
                    f"{where}: {host} is unreachable ({problem}) and the files are not in the local cache; "
                    f"check the network, proxy or HF_ENDPOINT"
                ) from None
    job = _Download(
        repo_id,
        time.monotonic() + seconds,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        endpoint=endpoint,
        force_download=force_download,
    )
    worker = threading.Thread(target=job.run, name=f"label-mae download {where}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive() or isinstance(job.error, _Cancelled):
        job.cancelled.set()
        raise HubTimeoutError(
            f"{where}: timed out after {seconds:g} s fetching {job.filename} from {host} (the server did not "
            f"answer in time or sent too slowly); raise timeout= or {TIMEOUT_ENV}, a partial download resumes"
        )
    if isinstance(job.error, CorruptWeightsError):  # a file that arrived but is invalid: it names the file
        raise job.error
    if job.error is not None:
        error = hub_error(job.error, where, job.filename, host, local_files_only)
        if job.filename == LABEL_SET_NAME and not local_files_only and _cached(repo_id, revision, cache_dir):
            error = type(error)(f"{error}; to load the cached config and weights without a label set, load "
                                "offline (local_files_only=True, HF_HUB_OFFLINE=1)")  # fmt: skip
        raise error from None
    folder = Path(job.paths[0]).parent
    if any(Path(p).parent != folder for p in job.paths):  # pragma: no cover - hf_hub_download keeps one snapshot
        raise CorruptWeightsError(f"{where}: config and weights resolved to different snapshots")
    return folder


def _cached(repo_id: str, revision: str | None, cache_dir) -> bool:
    """Whether the config and the weights of ``repo_id`` at ``revision`` are in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    found = [
        try_to_load_from_cache(repo_id, f, cache_dir=cache_dir, revision=revision) for f in (CONFIG_NAME, WEIGHTS_NAME)
    ]
    return all(isinstance(f, str) for f in found)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _unreachable(url: str, seconds: float) -> str | None:
    """Why no TCP connection to ``url``'s host, or to the proxy the environment sets for it
    (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, unless ``NO_PROXY`` names the host), can be opened (unknown name,
    refused, no route, no answer within ``seconds``), or None. One cheap connection, so that a machine
    without network fails at once instead of after huggingface_hub's retries (23 s)."""
    parts, via = urllib.parse.urlsplit(url), ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")  # ALL_PROXY too, as the Hub's HTTP client reads it
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        via = f" (through the proxy {proxy})"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=seconds):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}{via}"


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (``__cause__`` / ``__context__``), outermost first."""
    chain: list[BaseException] = []
    while e is not None and e not in chain and len(chain) < 16:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _kind_of(e: BaseException) -> str | None:
    """``"timeout"``, ``"unreachable"`` or None, from the exception's class names (httpx and requests differ)."""
    names = [c.__name__ for c in type(e).__mro__]
    if isinstance(e, TimeoutError) or any("Timeout" in n for n in names):
        return "timeout"
    if isinstance(e, ConnectionError) or any(n in ("ConnectError", "ConnectionError", "NetworkError") for n in names):
        return "unreachable"
    return None


def hub_error(e: BaseException, where: str, filename: str, host: str, local_files_only: bool) -> HubError:
    """The :class:`HubError` subclass that says what went wrong in ``hf_hub_download`` (``e``)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return ModelNotFoundError(f"{where}: repository not found on the Hub (or it is private: pass token=)")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return ModelNotFoundError(f"{where}: revision {where.rsplit('@', 1)[1]!r} not found")
    if isinstance(e, hf_errors.EntryNotFoundError) and not isinstance(e, hf_errors.LocalEntryNotFoundError):
        return ModelNotFoundError(f"{where}: the repo has no {filename} (not found)")
    # size check failed after the transfer, or the connection dropped mid-body (httpx / requests)
    if (isinstance(e, OSError) and "consistency" in str(e).lower()) or type(e).__name__ in (
        "RemoteProtocolError",
        "ChunkedEncodingError",
    ):
        return CorruptWeightsError(
            f"{where}: {filename} arrived truncated ({e}); retry the download (force_download=True)"
        )
    chain = _causes(e)
    offline = local_files_only or getattr(constants, "HF_HUB_OFFLINE", False)
    if offline or any(isinstance(c, hf_errors.OfflineModeIsEnabled) for c in chain):
        return OfflineError(
            f"{where}: {filename} is not in the local cache and downloads are off (offline: "
            f"local_files_only=True or HF_HUB_OFFLINE=1)"
        )
    for c in chain:
        status = getattr(getattr(c, "response", None), "status_code", None)
        if status in (401, 404):
            return ModelNotFoundError(f"{where}: {filename} not found at {host} (HTTP {status})")
        if isinstance(status, int) and status >= 500:
            return HubServerError(f"{where}: {host} answered HTTP {status} (server error) for {filename}; try later")
        if isinstance(c, getattr(hf_errors, "FileMetadataError", ())):
            return HubUnreachableError(f"{where}: {host} answered, but not as a Hugging Face Hub; check HF_ENDPOINT")
        kind = _kind_of(c)
        if kind == "timeout":
            return HubTimeoutError(f"{where}: {host} timed out fetching {filename} ({type(c).__name__}: {c})")
        if kind == "unreachable":
            return HubUnreachableError(
                f"{where}: {host} is unreachable ({type(c).__name__}: {c}); check the network, proxy or HF_ENDPOINT"
            )
    return HubUnreachableError(f"{where}: cannot fetch {filename} from {host}: {type(e).__name__}: {e}")


def read_weights_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> ``(dtype, shape)`` of every tensor of a safetensors file, from its header alone (nothing
    else is read). :class:`CorruptWeightsError`, naming the file and the tensor, when the header is not
    readable, a tensor is not floating point (:data:`FLOAT_DTYPES`) or its bytes lie outside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise CorruptWeightsError(
                f"{path}: unreadable safetensors file, truncated or not safetensors (header of {n} bytes in a "
                f"file of {size}; at most {MAX_HEADER_BYTES})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptWeightsError(f"{path}: unreadable safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path}: unreadable safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data = size - 8 - n
    out = {}
    for name, info in header.items():
        out[name] = _tensor_entry(path, name, info, data)
    return out


def _tensor_entry(path: Path, name: str, info, data: int) -> tuple[str, tuple[int, ...]]:
    """``(dtype, shape)`` of one header entry, checked against the ``data`` bytes after the header."""
    if not isinstance(info, dict):
        raise CorruptWeightsError(f"{path}: unreadable safetensors file (entry {name!r} is not an object)")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in FLOAT_DTYPES:
        raise CorruptWeightsError(
            f"{path}: tensor {name!r} has dtype {dtype!r}; weights must be floating point ({', '.join(FLOAT_DTYPES)})"
        )

    def ints(v, k: int | None = None) -> bool:
        return (
            isinstance(v, list)
            and (k is None or len(v) == k)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        )

    if not ints(shape) or len(shape) > 8 or not ints(offsets, 2) or not offsets[0] <= offsets[1] <= data:
        raise CorruptWeightsError(
            f"{path}: unreadable safetensors file (tensor {name!r}: shape {shape!r}, bytes {offsets!r} "
            f"of the {data} after the header)"
        )
    if math.prod(shape) * FLOAT_DTYPES[dtype] != offsets[1] - offsets[0]:
        raise CorruptWeightsError(
            f"{path}: unreadable safetensors file (tensor {name!r} of shape {shape} and dtype {dtype} "
            f"does not fill its {offsets[1] - offsets[0]} bytes)"
        )
    return dtype, tuple(shape)


# -- the two files of a model folder ------------------------------------------------------------
def weights_digest(model) -> str:
    """A short SHA-256 of a model's config and weights: which model made an output, to tell a rerun with
    the same model (resume) from one with another (redo), whatever its name or folder."""
    import hashlib

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_hub_files(model, folder, dtype=None) -> None:
    """Write ``config.json`` + ``model.safetensors`` of an :class:`~torch_label_mae.model.LMAE` (keys
    ``model.*``, as :class:`~torch_label_mae.completer.LabelCompleter` loads them) atomically.
    ``dtype=torch.float16`` halves the file; loading casts back to float32."""
    import torch
    from safetensors.torch import save_file

    from .io import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        v = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):  # such a file would not load
            raise ValueError(f"{k}: NaN or infinite values in {v.dtype} (beyond its range?); nothing written")
        state[f"model.{k}"] = v
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _stamp(path: Path):
    """What tells a file from the one that replaced it (an atomic write is a new inode), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextmanager
def config_kept(folder, config):
    """Around ``PyTorchModelHubMixin.save_pretrained``, which removes ``folder/config.json`` before it
    writes the weights: a save that fails or is interrupted before the new config is written puts back one
    that matches the weights in the folder (the old config while the weights are the old ones, else
    ``config``), so the folder still loads."""
    from .io import atomic_write

    path, weights = Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME
    old = path.read_bytes() if path.is_file() else None
    stamp = _stamp(weights)
    try:
        yield
    except BaseException:
        if old is not None and not path.exists():
            text = old if _stamp(weights) == stamp else json.dumps(config.to_dict(), indent=2).encode()
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(text))
        raise


def save_label_set(label_set, folder) -> None:
    """Write a completer's :class:`~torch_label_mae.label_sets.LabelSet` to ``folder/label_set.json``
    (atomically); None removes a stale one, so that the folder loads as the completer was."""
    from .io import atomic_write

    path = Path(folder) / LABEL_SET_NAME
    if label_set is None:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(label_set.to_dict(), indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_label_set_file(folder, config):
    """The :class:`~torch_label_mae.label_sets.LabelSet` of ``folder/label_set.json``; None without that
    file. A :class:`CorruptWeightsError` naming the file when it is not one (JSON of at most
    :data:`~torch_label_mae.config.MAX_CONFIG_BYTES` bytes, checked by ``LabelSet.from_dict``) or the model
    of ``config`` is not class-agnostic (a label set is for those)."""
    from .config import MAX_CONFIG_BYTES
    from .label_sets import LabelSet

    path = Path(folder) / LABEL_SET_NAME
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"over {MAX_CONFIG_BYTES} bytes")
        if not config.class_agnostic:
            raise ValueError("a label set is for class-agnostic models; this model has its own classes")
        return LabelSet.from_dict(json.loads(path.read_bytes().decode("utf-8")))
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise CorruptWeightsError(f"{path}: invalid label set ({e})") from None


def load_weights(path: Path, shapes):
    """The tensors of the weights file ``path`` (keys ``model.*``), checked against ``shapes()`` (name ->
    shape of the model's state, e.g. ``LMAE.state_shapes(config)``; called only once the header has
    passed): header first (dtypes, keys, shapes), then the values (finite). Every failure is a
    :class:`CorruptWeightsError` naming the file."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        header = read_weights_header(path)
    except OSError as e:
        raise CorruptWeightsError(f"{path}: unreadable safetensors file ({e})") from None
    want = {f"model.{k}": v for k, v in shapes().items()}
    missing, unexpected = sorted(set(want) - set(header)), sorted(set(header) - set(want))
    if missing or unexpected:
        raise CorruptWeightsError(
            f"{path} does not match its config: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for k, (_, shape) in header.items():
        if shape != want[k]:
            hint = (  # the one shape a config's prior section sets apart from the widths
                " (the prior section's combiner_features must be the combiner's input size)"
                if k == "model.prior_combiner.mlp.0.weight" and shape[0] == want[k][0]
                else ""
            )
            raise CorruptWeightsError(
                f"{path} does not match its config: tensor {k!r} has shape {list(shape)}, the config needs "
                f"{list(want[k])}{hint}"
            )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CorruptWeightsError(f"{path}: unreadable safetensors file ({e})") from None
    for k, t in state.items():
        if not t.dtype.is_floating_point:  # pragma: no cover - the header said otherwise
            raise CorruptWeightsError(f"{path}: tensor {k!r} has dtype {t.dtype}; weights must be floating point")
        bad = int((~torch.isfinite(t.to(torch.float32))).sum())  # the model's dtype: 1e300 in float64 is inf there
        if bad:
            raise CorruptWeightsError(
                f"{path}: tensor {k!r} holds {bad} NaN or infinite value(s) of {t.numel()} (as float32); "
                "weights must be finite"
            )
    return state


def read_config(path: Path):
    """The :class:`~torch_label_mae.config.LMAEConfig` of ``path``, validated; else a
    :class:`CorruptWeightsError` naming the file once and what is wrong."""
    from .config import LMAEConfig

    try:
        return LMAEConfig.from_json(path)
    except (OSError, ValueError, TypeError, RecursionError) as e:
        text = str(e).removeprefix(f"{path}: ")  # from_json names the file already
        raise CorruptWeightsError(f"{path}: invalid config ({text})") from None


def load_folder(folder):
    """``(config, state)`` of a model folder (``config.json`` + ``model.safetensors``), checked in this
    order, each failure a :class:`CorruptWeightsError` naming the file: the config (size, JSON, every
    field in range), the weights file's header (every tensor floating point, the keys and shapes the
    config implies; nothing allocated yet), the tensors' values (finite: no NaN or inf)."""
    from .model import LMAE

    folder = Path(folder)
    config = read_config(folder / CONFIG_NAME)
    return config, load_weights(folder / WEIGHTS_NAME, lambda: LMAE.state_shapes(config))
