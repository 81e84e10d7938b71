"""The authors' published models: where they live, download, verification, cache.

docs/method.md §8: Hugging Face repository ``kohei0209/mixit_mss`` at a pinned revision; each model
is ``models/{sup,mixit}/<name>/checkpoints/model.pth`` plus ``.../<name>/merged_config.yaml``.

Download (:func:`fetch_model`):

1. A file already in the cache with a verification record (``<file>.sha256``) of the same
   size is used as it is: no request at all.
2. Otherwise a HEAD request to the hub's ``resolve`` URL (redirects not followed, as
   huggingface_hub does) reads the hash the hub reports: ``X-Linked-Etag`` for LFS files (the
   SHA-256 of the content), else ``ETag`` (for small non-LFS files, the git blob SHA-1).
3. The file is downloaded (redirects followed) to a temporary name beside the destination,
   hashed on the fly, compared with the hub's hash and with :attr:`RegistryModel.sha256`
   when the registry records one, and only then renamed into place; a mismatch deletes it.

Environment: ``MIXIT_CACHE`` (cache folder, default ``~/.cache/mixit``), ``MIXIT_HUB_URL``
(hub base URL, default ``https://huggingface.co``; the tests point it at a local server),
``MIXIT_OFFLINE=1`` (never touch the network).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mixitcli import __version__

HUB_REPO = "kohei0209/mixit_mss"
HUB_REVISION = "20a286f28b4a4c9058b935544cb7934ecc132443"
DEFAULT_HUB_URL = "https://huggingface.co"
DEFAULT_MODEL = "sup.musdb18hq.bslocoformer-medium.mixit-fma-large-pretrained"
FILES = ("checkpoints/model.pth", "merged_config.yaml")
TIMEOUT_S = 30


class RegistryError(Exception):
    """A model name is unknown, or a published model cannot be fetched or verified."""


class DownloadError(RegistryError):
    """The hub could not be reached or refused; the message gives the URLs and where to put the files."""


class VerificationError(RegistryError):
    """A downloaded file does not match the hash the hub or the registry gives for it."""


@dataclass(frozen=True)
class RegistryModel:
    """One published model.

    Attributes:
        name: the folder name on the hub, e.g. ``sup.musdb18hq.bslocoformer-medium``.
        description: one line for listings.
        sha256: known SHA-256 per file (keys from :data:`FILES`); checked in addition to the
            hub's. Empty until someone records them (docs/method.md §8: not known here).
    """

    name: str
    description: str
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``sup`` (fine-tuned on MUSDB18-HQ) or ``mixit`` (MixIT pre-training only)."""
        return self.name.split(".")[0]

    def hub_path(self, file: str) -> str:
        return f"models/{self.kind}/{self.name}/{file}"


def _sup(size: str, fma: str | None) -> RegistryModel:
    name = f"sup.musdb18hq.bslocoformer-{size}" + (f".mixit-fma-{fma}-pretrained" if fma else "")
    start = f"fine-tuned from MixIT pre-training on FMA {fma}" if fma else "trained from scratch"
    return RegistryModel(name, f"{size} BS-Locoformer on MUSDB18-HQ, {start}")


def _mixit(size: str, fma: str, outputs: int) -> RegistryModel:
    what = "12 MixIT outputs" if outputs == 12 else "4 outputs selected for bass, drums, vocals, other"
    return RegistryModel(f"mixit.fma-{fma}.bslocoformer-{size}.{outputs}outputs", f"{size} BS-Locoformer pre-trained with MixIT on FMA {fma}, {what}")


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
            for size, fma in (("small", "large"), ("large", "large"), ("medium", "small"), ("medium", "medium"), ("medium", "large"), ("medium", "full"))
            for n in (12, 4)
        ),
    )
}


def cache_dir() -> Path:
    """``$MIXIT_CACHE``, else ``~/.cache/mixit``."""
    return Path(os.environ.get("MIXIT_CACHE") or Path.home() / ".cache" / "mixit").expanduser()


def hub_url() -> str:
    """``$MIXIT_HUB_URL``, else the Hugging Face Hub."""
    return (os.environ.get("MIXIT_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")


def offline() -> bool:
    return os.environ.get("MIXIT_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def get(name: str) -> RegistryModel:
    """The registry entry called ``name``.

    Raises:
        RegistryError: unknown name; the message lists the known ones.
    """
    if name not in MODELS:
        known = "\n".join(f"  {n}" for n in MODELS)
        raise RegistryError(f"{name!r} is neither a file or folder nor a published model. Published models:\n{known}")
    return MODELS[name]


def model_folder(name: str) -> Path:
    """Where ``name`` lives in the cache (an official model folder once fetched)."""
    model = get(name)
    return cache_dir() / "hub" / HUB_REPO.replace("/", "--") / HUB_REVISION / "models" / model.kind / model.name


def file_url(name: str, file: str) -> str:
    """The hub's download URL of one file of a published model."""
    return f"{hub_url()}/{HUB_REPO}/resolve/{HUB_REVISION}/{get(name).hub_path(file)}"


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
    """Download (once) and verify both files of a published model; return its folder.

    Raises:
        DownloadError: the hub cannot be reached (or ``MIXIT_OFFLINE`` is set) and a file is
            missing; the message gives each URL and the exact path to save it as.
        VerificationError: a downloaded file's hash differs from the hub's or the registry's.
    """
    model = get(name)
    folder = model_folder(name)
    try:
        for file in FILES:
            download(file_url(name, file), folder / file, expected_sha256=model.sha256.get(file), progress=progress)
    except DownloadError as e:
        manual = "\n".join(f"  {file_url(name, f)}\n    -> {folder / f}" for f in FILES)
        raise DownloadError(
            f"cannot fetch the published model {name}: {e}\n"
            f"Download these files yourself and save them exactly here:\n{manual}\n"
            f"(or pass a folder holding checkpoints/model.pth and merged_config.yaml to --model)"
        ) from e
    return folder


# -- one file ------------------------------------------------------------------------------


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _read_record(dest: Path) -> tuple[str, int] | None:
    try:
        digest, size = _record_path(dest).read_text().split()
        return digest, int(size)
    except (OSError, ValueError):
        return None


def _write_record(dest: Path, digest: str, size: int) -> None:
    tmp = _record_path(dest).with_name(f".{dest.name}.sha256.{os.getpid()}")
    tmp.write_text(f"{digest} {size}\n")
    tmp.replace(_record_path(dest))


def _normalise_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # let the 3xx surface: its headers carry the hub's metadata


def _request(url: str, method: str = "GET"):
    return urllib.request.Request(url, method=method, headers={"User-Agent": f"mixit/{__version__}", "Accept-Encoding": "identity"})


def hub_metadata(url: str) -> tuple[str | None, int | None]:
    """(hash, size) the hub reports for ``url``: the LFS SHA-256 (``X-Linked-Etag``) or the
    ``ETag`` (a git blob SHA-1 for a non-LFS file), and ``X-Linked-Size``/``Content-Length``.

    Raises:
        DownloadError: unreachable hub or an HTTP error (404, 401...).
    """
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        response = opener.open(_request(url, "HEAD"), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}") from e
        response = e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url} is unreachable ({getattr(e, 'reason', e)})") from e
    headers = response.headers
    digest = _normalise_etag(headers.get("X-Linked-Etag")) or _normalise_etag(headers.get("ETag"))
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    response.close()
    return digest, int(size) if size and size.isdigit() else None


def _kind_of(digest: str | None) -> str | None:
    if digest and re.fullmatch(r"[0-9a-f]{64}", digest):
        return "sha256"
    if digest and re.fullmatch(r"[0-9a-f]{40}", digest):
        return "git-sha1"
    return None


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _check(url: str, sha256: str, sha1: str, hub_digest: str | None, expected_sha256: str | None) -> None:
    kind = _kind_of(hub_digest)
    if expected_sha256 and sha256 != expected_sha256.lower():
        raise VerificationError(f"{url}: SHA-256 {sha256} differs from the registry's {expected_sha256}")
    if kind == "sha256" and sha256 != hub_digest:
        raise VerificationError(f"{url}: SHA-256 {sha256} differs from the hub's {hub_digest}")
    if kind == "git-sha1" and sha1 != hub_digest:
        raise VerificationError(f"{url}: git blob SHA-1 {sha1} differs from the hub's {hub_digest}")
    if kind is None and not expected_sha256:
        raise VerificationError(f"{url}: the hub reported no usable hash (ETag {hub_digest!r}), so the file cannot be verified")


def download(url: str, dest: Path, *, expected_sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is there; verify before keeping it.

    A file at ``dest`` without a verification record (placed by hand) is hashed and checked
    against the hub's metadata instead of downloaded again; offline it is used as it is
    (after checking ``expected_sha256`` when known).

    Raises:
        DownloadError: unreachable hub, HTTP error, or offline with no file at ``dest``.
        VerificationError: hash mismatch (the downloaded file is deleted).
    """
    dest = Path(dest)
    record = _read_record(dest)
    if dest.is_file() and record is not None and record[1] == dest.stat().st_size:
        if not expected_sha256 or record[0] == expected_sha256.lower():
            return dest
    if offline():
        if dest.is_file():
            return _accept_unverified(url, dest, expected_sha256)
        raise DownloadError(f"MIXIT_OFFLINE is set and {dest} is not there")
    try:
        hub_digest, size = hub_metadata(url)
    except DownloadError:
        if dest.is_file():  # placed by hand, and we are offline: trust it
            return _accept_unverified(url, dest, expected_sha256)
        raise
    if dest.is_file():
        sha256, sha1 = _hash_file(dest)
        _check(url, sha256, sha1, hub_digest, expected_sha256)
        _write_record(dest, sha256, dest.stat().st_size)
        return dest
    _fetch(url, dest, size, hub_digest, expected_sha256, progress)
    return dest


def _accept_unverified(url: str, dest: Path, expected_sha256: str | None) -> Path:
    import warnings

    if expected_sha256:
        sha256, _ = _hash_file(dest)
        if sha256 != expected_sha256.lower():
            raise VerificationError(f"{dest}: SHA-256 {sha256} differs from the registry's {expected_sha256}; fetch {url} again")
        _write_record(dest, sha256, dest.stat().st_size)
    else:
        warnings.warn(f"{dest}: using it unverified (the hub is unreachable to confirm its hash)", stacklevel=3)
    return dest


def _fetch(url: str, dest: Path, size: int | None, hub_digest: str | None, expected_sha256: str | None, progress: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial.{os.getpid()}")
    try:
        response = urllib.request.urlopen(_request(url), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url} is unreachable ({getattr(e, 'reason', e)})") from e
    total = size or int(response.headers.get("Content-Length") or 0) or None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    sha256, n = hashlib.sha256(), 0
    try:
        bar = Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True)  # stdout stays clean
        with response, open(tmp, "wb") as f, bar:
            task = bar.add_task(f"download {dest.name}", total=total)
            while chunk := response.read(1 << 20):
                f.write(chunk)
                sha256.update(chunk)
                n += len(chunk)
                bar.update(task, advance=len(chunk))
        if total is not None and n != total:
            raise DownloadError(f"{url}: the transfer stopped after {n} of {total} bytes")
        sha1 = _hash_file(tmp)[1] if _kind_of(hub_digest) == "git-sha1" else ""  # small non-LFS files only
        _check(url, sha256.hexdigest(), sha1, hub_digest, expected_sha256)
        tmp.replace(dest)
        _write_record(dest, sha256.hexdigest(), n)
    except (OSError, urllib.error.URLError) as e:
        raise DownloadError(f"{url}: the transfer failed ({e})") from e
    finally:
        tmp.unlink(missing_ok=True)
