"""Pretrained names, where their files live, and downloads (the only module that touches the network).

A name is ``<family>-m<ratio>`` (e.g. ``camvid-m0.5``), where the family is the dataset, or the
dataset and a variant (``camvid-rw``: the random-walk label prior); a bare ``<family>`` means every
ratio of that family (for multi-ratio routing). Resolution order for a registered name: the copy bundled in
the package (offline, no network), then the Hub repo at the registered revision via ``hf_hub_download``
(which caches). Any other string is a local folder or a Hub repo id ``owner/name``.

Hub failures become one :class:`HubError` subclass each, with a message that says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HUB_ORG = "torch-label-mae"


@dataclass(frozen=True)
class Pretrained:
    """A registered model: its name, Hub repo and revision, dataset, training mask ratio and variant
    (``""`` for the dataset's default family)."""

    name: str
    repo_id: str
    revision: str
    dataset: str
    ratio: float
    variant: str = ""

    @property
    def family(self) -> str:
        """``<dataset>`` or ``<dataset>-<variant>``: the name less its ratio."""
        return f"{self.dataset}-{self.variant}" if self.variant else self.dataset


def _entry(dataset: str, ratio: float, variant: str = "", revision: str = "main") -> Pretrained:
    name = f"{dataset}-{variant}-m{ratio:g}" if variant else f"{dataset}-m{ratio:g}"
    return Pretrained(name, f"{HUB_ORG}/{name}", revision, dataset, ratio, variant)


REGISTRY: dict[str, Pretrained] = {
    e.name: e
    for e in (_entry("camvid", 0.5), _entry("camvid", 0.5, "rw"), _entry("ccp", 0.5), _entry("ccp", 0.5, "rw"))
}
DEFAULT_MODEL = "camvid-m0.5"


class HubError(RuntimeError):
    """Base class of every failure to find or fetch pretrained weights."""


class UnknownModelError(HubError, ValueError):
    pass


class ModelNotFoundError(HubError):
    """The repo, revision or file does not exist on the Hub."""


class OfflineError(HubError):
    """Offline (or ``local_files_only``) and the files are not in the cache."""


class HubUnreachableError(HubError):
    """The Hub endpoint could not be reached."""


class CorruptWeightsError(HubError):
    """A weights or config file is truncated or unreadable."""


def list_pretrained() -> dict[str, Pretrained]:
    """Registered names -> :class:`Pretrained` (repo id, revision, dataset, ratio)."""
    return dict(REGISTRY)


def bundled_dir(name: str) -> Path | None:
    """The folder of a bundled copy of ``name`` (wheel: ``torch_label_mae/_bundled``; source checkout:
    ``hub/``), or None."""
    here = Path(__file__).resolve().parent
    for base in (here / "_bundled", here.parent / "hub"):
        d = base / name
        if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
            return d
    return None


def names_for(name: str) -> list[str]:
    """A family (``"camvid"``, ``"camvid-rw"``) -> every registered ratio of it; a full name -> itself."""
    if name in REGISTRY:
        return [name]
    group = sorted((e for e in REGISTRY.values() if e.family == name), key=lambda e: e.ratio)
    return [e.name for e in group]


def _unknown(name: str) -> UnknownModelError:
    families = sorted({e.family for e in REGISTRY.values()})
    return UnknownModelError(
        f"unknown model {name!r}: not a registered name, a local folder with {CONFIG_NAME} + "
        f"{WEIGHTS_NAME}, or a Hub repo id 'owner/name'. Registered: {sorted(REGISTRY)} "
        f"(or a family for all its ratios: {families})"
    )


def resolve(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
    endpoint: str | None = None,
    force_download: bool = False,
) -> Path:
    """Return a local folder holding ``config.json`` and ``model.safetensors`` for ``name_or_path``."""
    p = Path(name_or_path)
    if p.is_dir():
        for f in (CONFIG_NAME, WEIGHTS_NAME):
            if not (p / f).is_file():
                raise ModelNotFoundError(f"{p} is a folder but holds no {f}")
        return p
    name = str(name_or_path)
    entry = REGISTRY.get(name)
    if entry is not None:
        if revision in (None, entry.revision):
            local = bundled_dir(name)
            if local is not None:
                return local
        return download(
            entry.repo_id,
            revision=revision or entry.revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint,
            force_download=force_download,
        )
    if name.count("/") == 1 and not name.startswith((".", "/")) and not p.exists():
        return download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint,
            force_download=force_download,
        )
    raise _unknown(name)


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
    endpoint: str | None = None,
    force_download: bool = False,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a Hub repo (cached); returns their folder.

    ``endpoint`` defaults to the ``HF_ENDPOINT`` environment variable read at call time.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    if force_download and local_files_only:
        raise ValueError("force_download=True and local_files_only=True contradict each other")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    where = f"{repo_id}@{revision or 'main'}"
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    token=token,
                    endpoint=endpoint,
                    force_download=force_download,
                    library_name="torch-label-mae",
                )
            )
        except hf_errors.RepositoryNotFoundError:
            raise ModelNotFoundError(
                f"{where}: repository not found on the Hub (or it is private: pass token=)"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise ModelNotFoundError(f"{where}: revision {revision!r} not found") from None
        except hf_errors.LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass of it
            raise OfflineError(
                f"{where}: {filename} is not in the local cache and the Hub cannot be used "
                f"(offline, local_files_only=True, or the endpoint is unreachable: "
                f"{endpoint or 'https://huggingface.co'})"
            ) from None
        except hf_errors.EntryNotFoundError:
            raise ModelNotFoundError(f"{where}: the repo has no {filename}") from None
        except Exception as e:  # the HTTP client's own errors differ between huggingface_hub versions
            # size check failed after the transfer, or the connection dropped mid-body (httpx / requests)
            if (isinstance(e, OSError) and "consistency" in str(e).lower()) or type(e).__name__ in (
                "RemoteProtocolError",
                "ChunkedEncodingError",
            ):
                raise CorruptWeightsError(
                    f"{where}: {filename} arrived truncated ({e}); retry the download (force_download=True)"
                ) from None
            raise HubUnreachableError(
                f"{where}: cannot fetch {filename} from {endpoint or 'the Hub'}: {type(e).__name__}: {e}"
            ) from None
    folder = Path(paths[0]).parent
    if Path(paths[1]).parent != folder:  # pragma: no cover - hf_hub_download keeps one snapshot folder
        raise CorruptWeightsError(f"{where}: config and weights resolved to different snapshots")
    return folder
