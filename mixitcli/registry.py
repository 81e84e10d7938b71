"""The authors' published models: names, where they live on the Hugging Face Hub, download, verify.

docs/method.md §8: Hugging Face repository ``kohei0209/mixit_mss`` at a pinned revision; each model
is ``models/{sup,mixit}/<name>/checkpoints/model.pth`` plus ``.../<name>/merged_config.yaml``.

Files come through ``huggingface_hub`` (:func:`huggingface_hub.hf_hub_download`, only the two files
a model needs, at the pinned revision), so the hub's own conventions hold: one shared cache under
``HF_HOME`` (or ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1``, mirrors through ``HF_ENDPOINT``,
``HF_TOKEN``, and files fetched elsewhere with ``hf download`` can be copied in. Both are read when
a model is fetched, not when this module is imported.

On top of the hub's client: a freshly downloaded file is hashed and compared with the hash the
hub reported for it (the SHA-256 of an LFS file, the git blob SHA-1 of a small one; the hub's
cache names each blob by that hash), and removed on a mismatch; when the hub cannot be reached
and nothing is cached, the error names the model, its files, the ``hf download`` command that
fetches them on another machine, and where to put them by hand. A cache that cannot be written
(read-only ``HF_HOME``, no permission) is told apart from an unreachable hub (issue 20): the
advice is then a writable cache (``HF_HUB_CACHE``) or a local folder for ``--model``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HUB_REPO = "kohei0209/mixit_mss"
HUB_REVISION = "20a286f28b4a4c9058b935544cb7934ecc132443"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MODEL = "sup.musdb18hq.bslocoformer-medium.mixit-fma-large-pretrained"
FILES = ("checkpoints/model.pth", "merged_config.yaml")


class RegistryError(Exception):
    """A model name is unknown, or a published model cannot be fetched or verified."""


class DownloadError(RegistryError):
    """The hub could not be reached or refused; the message says how to get the files another way."""


class CacheNotWritableError(RegistryError):
    """The hub's cache cannot be written, so a model that is not in it cannot be downloaded."""


class VerificationError(RegistryError):
    """A downloaded file does not match the hash the hub gives for it (the file was removed)."""


@dataclass(frozen=True)
class RegistryModel:
    """One published model.

    Attributes:
        name: the folder name on the hub, e.g. ``sup.musdb18hq.bslocoformer-medium``.
        size: the model preset, ``small``, ``medium`` or ``large``.
        outputs: how many signals the model outputs (4 stems, or 12 MixIT outputs).
        description: one line for listings.
        row: where the paper uses it, e.g. ``Table 1 M2; Table 3 FMA large``.
    """

    name: str
    size: str
    outputs: int
    description: str
    row: str

    @property
    def kind(self) -> str:
        """``sup`` (fine-tuned on MUSDB18-HQ) or ``mixit`` (MixIT pre-training only)."""
        return self.name.split(".")[0]

    def hub_path(self, file: str) -> str:
        return f"models/{self.kind}/{self.name}/{file}"


# Paper rows (docs/method.md §9): Table 1 S/M/L with 1 = from scratch, 2 = MixIT pre-trained on FMA
# large; Table 3: the medium model pre-trained on each FMA subset (and not at all).
_TABLE_ROWS = {
    ("small", None): "Table 1 S1",
    ("small", "large"): "Table 1 S2",
    ("medium", None): "Table 1 M1; Table 3 no pre-training",
    ("medium", "large"): "Table 1 M2; Table 3 FMA large",
    ("medium", "small"): "Table 3 FMA small",
    ("medium", "medium"): "Table 3 FMA medium",
    ("medium", "full"): "Table 3 FMA full",
    ("large", None): "Table 1 L1",
    ("large", "large"): "Table 1 L2",
}


def _sup(size: str, fma: str | None) -> RegistryModel:
    name = f"sup.musdb18hq.bslocoformer-{size}" + (f".mixit-fma-{fma}-pretrained" if fma else "")
    start = f"fine-tuned from MixIT pre-training on FMA {fma}" if fma else "trained from scratch"
    return RegistryModel(name, size, 4, f"{size} BS-Locoformer on MUSDB18-HQ, {start}", _TABLE_ROWS[size, fma])


def _mixit(size: str, fma: str, outputs: int) -> RegistryModel:
    what = "12 MixIT outputs" if outputs == 12 else "4 outputs selected for bass, drums, vocals, other"
    row = f"pre-training of {_TABLE_ROWS[size, fma].split(';')[0]}" + (
        "; Table 2" if (size, fma) == ("medium", "large") else ""
    )
    return RegistryModel(
        f"mixit.fma-{fma}.bslocoformer-{size}.{outputs}outputs",
        size,
        outputs,
        f"{size} BS-Locoformer pre-trained with MixIT on FMA {fma}, {what}",
        row,
    )


MODELS: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        # 9 fine-tuned: small/medium/large from scratch; small and large pre-trained on FMA
        # large; medium pre-trained on FMA small/medium/large/full (paper Tables 1 and 3).
        *(_sup(size, None) for size in ("small", "medium", "large")),
        _sup("small", "large"),
        _sup("large", "large"),
        *(_sup("medium", fma) for fma in ("small", "medium", "large", "full")),
        # 12 MixIT pre-trained: the same 6 pre-trainings, 12 outputs and 4 selected ones.
        *(
            _mixit(size, fma, n)
            for size, fma in (
                ("small", "large"),
                ("large", "large"),
                ("medium", "small"),
                ("medium", "medium"),
                ("medium", "large"),
                ("medium", "full"),
            )
            for n in (12, 4)
        ),
    )
}


def get(name: str) -> RegistryModel:
    """The registry entry called ``name``.

    Raises:
        RegistryError: unknown name; the message lists the known ones.
    """
    if name not in MODELS:
        known = "\n".join(f"  {n}" for n in MODELS)
        raise RegistryError(
            f"{name!r} is neither a file or folder nor a published model (`mixit models` lists them). Published models:\n{known}"
        )
    return MODELS[name]


# -- the hub's environment, read at call time ------------------------------------------------------


def cache_dir() -> Path:
    """The hub's cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def endpoint() -> str:
    """``$HF_ENDPOINT`` (a mirror), else the Hugging Face Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value: use the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def file_url(name: str, file: str) -> str:
    """The hub's download URL of one file of a published model."""
    return f"{endpoint()}/{HUB_REPO}/resolve/{HUB_REVISION}/{get(name).hub_path(file)}"


def snapshot_folder(name: str) -> Path:
    """Where the hub's cache keeps ``name`` at the pinned revision (an official model folder)."""
    return (
        cache_dir()
        / f"models--{HUB_REPO.replace('/', '--')}"
        / "snapshots"
        / HUB_REVISION
        / "models"
        / get(name).kind
        / name
    )


def is_cached(name: str) -> bool:
    folder = snapshot_folder(name)
    return all((folder / file).is_file() for file in FILES)


def download_command(name: str) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that fetches ``name`` into the hub's cache."""
    model = get(name)
    files = " ".join(model.hub_path(f) for f in FILES)
    return f"hf download {HUB_REPO} {files} --revision {HUB_REVISION}"


# -- resolving and fetching ----------------------------------------------------------------------


def resolve_model(spec: str | None, *, progress: bool = True) -> Path:
    """A path for :func:`mixitcli.model.load_model`: ``spec`` itself when it exists, else the
    cached folder of the published model ``spec`` (fetched if needed; None: the default).

    Raises:
        RegistryError: ``spec`` is neither a path nor a published model, or fetching failed.
    """
    spec = spec or DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec not in MODELS and ("/" in spec or spec.endswith((".pt", ".pth", ".ckpt"))):
        raise RegistryError(f"{spec}: no such file or folder")
    return fetch_model(spec, progress=progress)


def fetch_model(name: str, *, progress: bool = True) -> Path:
    """Download (once, into the hub's cache) and verify both files of a published model.

    Returns:
        The model's folder in the hub's cache (``checkpoints/model.pth`` + ``merged_config.yaml``).

    Raises:
        DownloadError: the hub cannot be reached, refuses, or is offline with nothing cached;
            the message says how to get the files another way.
        VerificationError: a downloaded file's hash differs from the hub's (it was removed).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    model = get(name)
    for file in FILES:
        was_cached = (snapshot_folder(name) / file).is_file()
        if not was_cached and not offline():
            _check_cache_writable(name)
        try:
            with _progress_bars(progress):
                path = hf_hub_download(
                    HUB_REPO,
                    model.hub_path(file),
                    revision=HUB_REVISION,
                    cache_dir=cache_dir(),
                    endpoint=endpoint(),
                    local_files_only=offline(),
                )
        except RevisionNotFoundError as e:
            raise DownloadError(
                f"the hub at {endpoint()} has no revision {HUB_REVISION} of {HUB_REPO}, which this mixit is pinned to ({_first_line(e)})"
            ) from e
        except (GatedRepoError, RepositoryNotFoundError) as e:
            raise DownloadError(
                f"the hub at {endpoint()} refused {HUB_REPO} ({_first_line(e)}); if it needs a login, set HF_TOKEN or run `hf auth login`"
            ) from e
        except LocalEntryNotFoundError as e:  # offline or unreachable, and not in the cache
            raise DownloadError(_unreachable_message(name, file, e)) from e
        except RemoteEntryNotFoundError as e:
            raise DownloadError(
                f"the hub has no file {model.hub_path(file)} at revision {HUB_REVISION} ({_first_line(e)})"
            ) from e
        except (HfHubHTTPError, OSError) as e:  # HfHubHTTPError is an OSError too, without errno
            if isinstance(e, PermissionError) or e.errno in _UNWRITABLE:  # the cache, not the network
                raise CacheNotWritableError(_unwritable_message(name, e)) from e
            raise DownloadError(_unreachable_message(name, file, e)) from e
        if not was_cached:
            _verify_download(Path(path), model.hub_path(file))
    return snapshot_folder(name)


_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def _check_cache_writable(name: str) -> None:
    """Raise :class:`CacheNotWritableError` when the cache cannot take a download (before any
    request: the hub's client would report it as a failed download)."""
    from mixitcli.storage import check_writable

    try:
        check_writable(cache_dir())
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        raise CacheNotWritableError(_unwritable_message(name, e)) from e


def _unwritable_message(name: str, e: OSError) -> str:
    where = e.filename or cache_dir()
    reason = (e.strerror or "not writable").lower()
    return (
        f"cannot download the published model {name}: the Hugging Face cache {cache_dir()} cannot be written "
        f"({reason}: {where}). Point the cache at a writable folder and run the command again, e.g.\n"
        f"  export HF_HUB_CACHE=$HOME/hf-cache\n"
        f"(or HF_HOME for all of huggingface_hub's files). Or download the model into a folder of your choice with\n"
        f"  {download_command(name)} --local-dir DIR\n"
        f"and pass DIR/{get(name).hub_path('').rstrip('/')} to --model."
    )


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _unreachable_message(name: str, file: str, e: Exception) -> str:
    why = "HF_HUB_OFFLINE is set" if offline() else f"the hub at {endpoint()} cannot be reached ({_first_line(e)})"
    urls = "\n".join(f"  {file_url(name, f)}" for f in FILES)
    folder = f"models--{HUB_REPO.replace('/', '--')}"
    try:
        from mixitcli.storage import check_writable

        check_writable(cache_dir())
        into = f"into {cache_dir()}"
    except OSError as problem:  # copying into a read-only cache cannot work: name a cache that can
        into = (
            f"into a writable folder, and point the cache at it: {cache_dir()} cannot be written "
            f"({(problem.strerror or 'not writable').lower()}), so `export HF_HUB_CACHE=FOLDER` first"
        )
    return (
        f"cannot fetch the published model {name}: {why}, and {file} is not in the cache {cache_dir()}.\n"
        f"On a machine with internet access, fetch its two files into the hub's cache with\n"
        f"  {download_command(name)}\n"
        f"and copy that machine's ~/.cache/huggingface/hub/{folder} {into}.\n"
        f"Or download\n{urls}\n"
        f"into any folder as checkpoints/model.pth and merged_config.yaml, and pass that folder to --model."
    )


@contextmanager
def _progress_bars(show: bool):
    """huggingface_hub's download bars (stderr) on or off for one call."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_disabled:
            enable_progress_bars()


def _hashes(path: Path) -> tuple[str, str]:
    """(SHA-256, git blob SHA-1) of a file's content."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _hub_hash(path: Path, hub_path: str) -> str:
    """The hash the hub reported for a cached file: the cache names each blob by it (the ETag)."""
    blob = Path(os.path.realpath(path)).name
    if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob):
        return blob
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    # a cache without symlinks (some Windows set-ups) keeps plain copies: ask the hub again
    url = hf_hub_url(HUB_REPO, hub_path, revision=HUB_REVISION, endpoint=endpoint())
    return (get_hf_file_metadata(url).etag or "").strip('"').lower()


def _verify_download(path: Path, hub_path: str) -> None:
    """Compare a freshly downloaded file with the hub's hash; remove it (blob and link) on a mismatch.

    Raises:
        VerificationError: the content's hash differs from the hub's, or the hub gave none.
    """
    expected = _hub_hash(path, hub_path)
    sha256, sha1 = _hashes(path)
    got, kind = (sha256, "SHA-256") if len(expected) == 64 else (sha1, "git blob SHA-1")
    if len(expected) in (40, 64) and got == expected:
        return
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
    if len(expected) not in (40, 64):
        raise VerificationError(
            f"{hub_path}: the hub reported no usable hash ({expected!r}), so the download cannot be verified; it was removed"
        )
    raise VerificationError(
        f"{hub_path}: the downloaded file's {kind} {got} differs from the hub's {expected}; "
        "the file was removed from the cache. Run the command again; if it happens again, the mirror or proxy in between alters files."
    )


# -- listing -------------------------------------------------------------------------------------


def parameter_count(model: RegistryModel) -> int:
    """Parameters of a published model, counted without allocating its weights."""
    import torch

    from mixitcli.model import build_model

    with torch.device("meta"):
        net = build_model(model.size, n_outputs=model.outputs)
    return sum(p.numel() for p in net.parameters())


def listing() -> list[dict]:
    """One row per published model: name, size, outputs, parameters, paper row, cached or not."""
    counts: dict[tuple[str, int], int] = {}
    rows = []
    for model in MODELS.values():
        key = (model.size, model.outputs)
        if key not in counts:
            counts[key] = parameter_count(model)
        rows.append(
            {
                "name": model.name,
                "size": model.size,
                "outputs": model.outputs,
                "parameters": counts[key],
                "row": model.row,
                "cached": is_cached(model.name),
                "default": model.name == DEFAULT_MODEL,
            }
        )
    return rows
