"""Separating many files: finding inputs, naming outputs, skipping, failures, progress.

:func:`separate_many` is what `mixit separate` calls. Output naming lives here and only
here: :func:`plan` turns inputs and a filename template into :class:`Job` s, and rejects
(all at once, before any separation) templates whose outputs collide or would overwrite an
input. :func:`load_network` picks the backend and precision and prepares the model once.
:func:`run_jobs` separates the jobs one by one with :func:`mixitcli.separate.separate_file`;
a file that fails is reported and the others go on.

One writer per output file (issue 20): while a job is separated, the lock of each of its stem
files is held (``.NAME.lock`` beside it, :func:`mixitcli.lock.file_lock`). Two runs into the
same ``--out`` are a normal use (one per album, one per machine), so ``--out`` itself is not
locked; two runs that would write the same stem (the same song, or two songs whose names give
the same ``OUT/<track>/``) cannot both write it: the second fails that song, naming the first,
and goes on with its others. Per file rather than per folder, so any ``--filename`` template
(``{track}_{stem}.{ext}`` puts every song in one folder) locks exactly what it writes. Under
those locks, temporaries left by killed runs are removed, whatever their pid. A stop signal
(SIGINT, SIGTERM, SIGUSR1) stops at once: the stem files being written are deleted, finished
songs are kept, and ``--skip-existing`` goes on later.
"""

from __future__ import annotations

import contextlib
import os
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixitcli import audio
from mixitcli.data.errors import with_problems
from mixitcli.inference import Network, OnnxNetwork, prepare
from mixitcli.lock import LockError, file_lock, holding
from mixitcli.separate import ChunkOptions, FileResult, SeparationError, pick_device, separate_file
from mixitcli.signals import Interrupted, raise_on_stop
from mixitcli.stems import COMPLEMENT
from mixitcli.storage import StorageError, WriteError, describe_os_error, remove_temporaries_of

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
TEMPLATE_FIELDS = {
    "track": "the input file's name without its extension",
    "stem": "the stem name (the model's, e.g. bass, drums, vocals, other; STEM and no_STEM with --two-stems)",
    "ext": "the output format's extension (wav, flac, mp3)",
    "folder": "the input's folder relative to the INPUT folder it was found in (empty for files given directly)",
    "parent": "the name of the folder holding the input (e.g. the song folder of MUSDB's mixture.wav)",
}


class PlanError(SeparationError):
    """Inputs or output naming are unusable; ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        super().__init__(with_problems(message, self.problems))


@dataclass(frozen=True)
class Job:
    """One input file and the stem files it becomes."""

    input: Path
    outputs: dict[str, Path]

    def done(self) -> bool:
        """All outputs exist (so ``--skip-existing`` skips it)."""
        return all(p.is_file() for p in self.outputs.values())


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in audio.AUDIO_EXTENSIONS and not path.name.startswith(".")


def find_inputs(inputs: Sequence[str | Path], *, exclude: Path | None = None) -> list[tuple[Path, Path | None]]:
    """The audio files named by ``inputs``: files as given, folders walked recursively
    (hidden files and anything under ``exclude``, the output folder, left out -- unless the
    output folder is the walked folder itself or holds it: then nothing is left out here, and
    :func:`separate_many` drops the files that are its own outputs).

    Returns:
        (file, folder it was found in, or None for a file given directly), in order, no repeats.

    Raises:
        PlanError: a missing input, or a folder holding no audio files.
    """
    found: list[tuple[Path, Path | None]] = []
    problems: list[str] = []
    exclude = exclude.resolve() if exclude is not None else None
    for given in map(Path, inputs):
        if given.is_file():
            found.append((given, None))
        elif given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file() and _is_audio(p))
            if exclude is not None and not given.resolve().is_relative_to(exclude):
                files = [p for p in files if not p.resolve().is_relative_to(exclude)]
            if not files:
                problems.append(f"{given}: no audio files ({', '.join(audio.AUDIO_EXTENSIONS)}) in this folder")
            found += [(p, given) for p in files]
        else:
            problems.append(f"{given}: no such file or folder")
    if problems:
        raise PlanError("cannot read the inputs:", problems)
    seen, unique = set(), []
    for path, root in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, root))
    return unique


def check_template(template: str) -> None:
    """Raise :class:`PlanError` when ``template`` uses unknown fields or is an absolute path."""
    problems = []
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise PlanError(f"--filename {template!r} is not a valid template ({e})") from e
    unknown = sorted(fields - set(TEMPLATE_FIELDS))
    if unknown:
        problems.append(
            f"unknown field(s) {', '.join('{' + u + '}' for u in unknown)}; use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
        )
    if os.path.isabs(template):
        problems.append("it must be relative to --out")
    if problems:
        raise PlanError(f"--filename {template!r}:", problems)


def output_path(path: Path, root: Path | None, out_dir: Path, *, stem: str, template: str, ext: str) -> Path:
    """Where ``stem`` of the input ``path`` (found in folder ``root``, or given directly) goes."""
    folder = path.parent.relative_to(root).as_posix() if root is not None else ""
    name = template.format(track=path.stem, stem=stem, ext=ext, folder=folder, parent=path.parent.name)
    return Path(os.path.normpath(Path(out_dir) / name.lstrip("/")))  # an empty {folder} leaves a leading "/"


def without_own_outputs(
    found: Sequence[tuple[Path, Path | None]], out_dir: str | Path, *, stems: Sequence[str], template: str, ext: str
) -> list[tuple[Path, Path | None]]:
    """Drop the walked files that this command writes itself (stems of an earlier run, when
    --out is an input folder: `mixit separate DIR --out DIR`). Files given directly stay."""
    outputs = {
        output_path(p, r, Path(out_dir), stem=s, template=template, ext=ext).resolve() for p, r in found for s in stems
    }
    return [(p, r) for p, r in found if r is None or p.resolve() not in outputs]


def plan(
    inputs: Sequence[tuple[Path, Path | None]],
    out_dir: str | Path,
    *,
    stems: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
) -> list[Job]:
    """Name every output file.

    Args:
        inputs: from :func:`find_inputs`.
        out_dir: the output folder; the template is relative to it.
        stems: the stems to write.
        template: a path with the fields of :data:`TEMPLATE_FIELDS`.
        ext: output extension (wav, flac, mp3, ogg).

    Raises:
        PlanError: bad template, two outputs with the same path (the message suggests a
            field that tells them apart), or an output that is one of the inputs.
    """
    check_template(template)
    out_dir = Path(out_dir)
    jobs, owner, problems = [], {}, []
    input_paths = {p.resolve() for p, _ in inputs}
    for path, root in inputs:
        outputs = {}
        for stem in stems:
            out = output_path(path, root, out_dir, stem=stem, template=template, ext=ext)
            key = out.resolve()
            if not key.is_relative_to(out_dir.resolve()):
                problems.append(f"{out}: outside --out {out_dir}")
            elif key in input_paths:
                problems.append(f"{out}: would overwrite an input file")
            elif key in owner:
                problems.append(f"{out}: written for both {owner[key]} and {path}")
            owner[key] = path
            outputs[stem] = out
        jobs.append(Job(path, outputs))
    if problems:
        hint = ""
        if any("written for both" in p for p in problems):
            hint = ' Tell them apart with --filename, e.g. "{folder}/{track}/{stem}.{ext}" or "{parent}/{stem}.{ext}".'
        raise PlanError(f"the output names do not work.{hint}", problems)
    return jobs


class Reporter:
    """Progress callbacks of :func:`run_jobs`; this base class shows nothing."""

    def start(self, n_files: int, how: str) -> None: ...
    def file_started(self, job: Job, seconds: float) -> None: ...
    def file_progress(self, seconds_done: float) -> None: ...
    def file_done(self, job: Job, result: FileResult) -> None: ...
    def file_skipped(self, job: Job) -> None: ...
    def file_failed(self, job: Job, message: str) -> None: ...
    def stop(self) -> None: ...


class RichReporter(Reporter):
    """Two progress bars (:mod:`mixitcli.progress`): all files, and the current file with its real-time factor."""

    def __init__(self, console):
        from mixitcli.progress import Progress

        self.console = console
        self.progress = Progress(console)

    def start(self, n_files: int, how: str) -> None:
        self.progress.start()
        self.overall = self.progress.bar("separating", n_files, unit="files", info=how)
        self.current = None

    def file_started(self, job: Job, seconds: float) -> None:
        self.file_t0 = time.perf_counter()
        self.current = self.progress.bar(job.input.name[:40], max(1, round(seconds)), unit="s")

    def file_progress(self, seconds_done: float) -> None:
        wall = time.perf_counter() - self.file_t0
        rtf = f"RTF {wall / seconds_done:.2f}" if seconds_done > 0 else ""
        self.current.update(done=round(seconds_done), info=rtf)

    def _end_file(self) -> None:
        if self.current is not None:
            self.current.remove()
            self.current = None
        self.overall.advance()

    def file_done(self, job: Job, result: FileResult) -> None:
        self._end_file()
        self.progress.print(f"[green]done[/] {job.input} ({result.seconds:.0f} s of audio, RTF {result.rtf:.2f})")
        for note in result.warnings():
            self.progress.print(f"[yellow]warning:[/] {note}")

    def file_skipped(self, job: Job) -> None:
        self._end_file()
        self.progress.print(f"[dim]skipped[/] {job.input} (outputs exist)")

    def file_failed(self, job: Job, message: str) -> None:
        self._end_file()
        self.progress.print(f"[bold red]failed[/] {job.input}: {message}")

    def stop(self) -> None:
        self.progress.stop()


@dataclass
class BatchSummary:
    """What :func:`run_jobs` did, and how the model ran (:meth:`mixitcli.inference.Network.describe`)."""

    done: list[FileResult] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    network: str = ""

    def line(self) -> str:
        seconds = sum(r.seconds for r in self.done)
        wall = sum(r.wall_s for r in self.done)
        rtf = f", RTF {wall / seconds:.2f}" if seconds else ""
        rtf += f" ({self.network})" if self.network else ""
        nonfinite = sum(bool(r.nonfinite) for r in self.done)
        return (
            f"separated {len(self.done)} file(s), {seconds / 60:.1f} min of audio in {wall:.0f} s{rtf}; "
            f"skipped {len(self.skipped)}; failed {len(self.failed)}"
            + (f"; {nonfinite} with non-finite samples replaced by 0" if nonfinite else "")
        )


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def claimed(job: Job) -> Iterator[None]:
    """Hold the locks of ``job``'s output files for the block and remove the temporaries that
    killed runs left of them; afterwards, remove the folders the block created that are still
    empty (a song that failed leaves no empty ``OUT/<track>/`` behind).

    Raises:
        LockError: another process is writing one of the outputs (nothing was changed).
        WriteError: the lock files cannot be written (full disk, read-only folder, ...).
    """
    created = {f for p in job.outputs.values() for f in _missing_folders(p.parent)}
    folders = sorted({str(p.parent) for p in job.outputs.values()})
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(holding(*(file_lock(p) for p in job.outputs.values()), what=", ".join(folders)))
            except OSError as e:  # the machine's problem, as when the stems are written
                raise WriteError(e.errno, e.strerror or str(e), e.filename) from e
            for path in job.outputs.values():
                remove_temporaries_of(path)
            yield
    finally:
        for folder in sorted(created, key=lambda f: len(f.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def run_jobs(
    model,
    jobs: Sequence[Job],
    *,
    options: ChunkOptions = ChunkOptions(),
    device=None,
    precision: str = "fp32",
    sample_rate: int | None = None,
    bits: str = "24",
    skip_existing: bool = False,
    reporter: Reporter | None = None,
) -> BatchSummary:
    """Separate every job; a failing file is recorded in the summary and the others go on.

    ``model`` is prepared once for all files (:func:`mixitcli.inference.prepare`, with ``device``
    and ``precision``), unless it is a :class:`mixitcli.inference.Network` already. Each job
    holds the locks of its output files while it runs (see :func:`claimed`); a job whose
    outputs another process is writing fails with that process's name.
    """
    network = prepare(model, device=device, precision=precision)
    reporter = reporter or Reporter()
    summary = BatchSummary(network=network.describe())
    reporter.start(len(jobs), summary.network)
    try:
        for job in jobs:
            if skip_existing and job.done():
                with contextlib.suppress(LockError, OSError), claimed(job):
                    pass  # only clears what killed runs left beside finished stems (when it can)
                summary.skipped.append(job)
                reporter.file_skipped(job)
                continue
            try:
                with claimed(job):
                    reporter.file_started(job, audio.info(job.input).seconds)
                    result = separate_file(
                        network,
                        job.input,
                        job.outputs,
                        options=options,
                        sample_rate=sample_rate,
                        bits=bits,
                        on_progress=reporter.file_progress,
                    )
            except LockError as e:
                message = (
                    f"{e} This song was left out; run the same command with --skip-existing once that one has finished."
                )
                summary.failed.append((job.input, message))
                reporter.file_failed(job, message)
                continue
            except WriteError as e:  # the machine's problem: every other file would fail too
                raise StorageError(
                    f"{describe_os_error(e)}\nStopped after {len(summary.done)} separated file(s); "
                    "run the same command with --skip-existing to separate the rest."
                ) from e
            except (audio.AudioError, SeparationError, RuntimeError, ValueError, OSError) as e:
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                message = message.removeprefix(f"{job.input}: ")  # the reporter names the file
                summary.failed.append((job.input, message))
                reporter.file_failed(job, message)
                continue
            summary.done.append(result)
            reporter.file_done(job, result)
    finally:
        reporter.stop()
    return summary


def two_stem_outputs(stem: str, model_stems: tuple[str, ...]) -> list[str]:
    """The files of ``--two-stems STEM``: STEM and ``no_STEM`` (the sum of the other outputs).

    Raises:
        SeparationError: the model has no such stem, or no other output to sum.
    """
    if stem not in model_stems:
        raise SeparationError(f"--two-stems {stem}: this model outputs {', '.join(model_stems)}; name one of them")
    if len(model_stems) < 2:
        raise SeparationError(f"--two-stems {stem}: this model has no other output to make {COMPLEMENT}{stem} from")
    if f"{COMPLEMENT}{stem}" in model_stems:
        raise SeparationError(
            f"--two-stems {stem}: this model has a stem named {COMPLEMENT}{stem} already; use --stems"
        )
    return [stem, f"{COMPLEMENT}{stem}"]


BACKENDS = ("auto", "torch", "onnxruntime")
"""Values of ``--backend``: auto runs a .onnx file with onnxruntime and every other model with torch."""


def load_network(
    model: str | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> Network:
    """The model `mixit separate` runs, loaded and prepared once.

    Args:
        model: as :func:`separate_many`'s; a ``.onnx`` file is a graph of `mixit export --onnx`.
        backend: one of :data:`BACKENDS`.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (onnxruntime: the CPU only).
        precision: "auto", "fp32" or "bf16" (:mod:`mixitcli.inference`; onnxruntime: float32 only).
        progress: show a download's progress.

    Raises:
        PlanError: a backend, model, device and precision that do not go together (all listed).
        SeparationError: the ONNX file cannot be run.
        RegistryError, ModelLoadError, DeviceError: as :func:`separate_many`.
    """
    from mixitcli.model import load_model
    from mixitcli.onnxrun import OnnxError
    from mixitcli.registry import DEFAULT_MODEL, resolve_model

    onnx_file = model is not None and str(model).lower().endswith(".onnx")
    backend = ("onnxruntime" if onnx_file else "torch") if backend == "auto" else backend
    problems = []
    if backend == "onnxruntime":
        if not onnx_file:
            name = model or DEFAULT_MODEL
            problems.append(
                f"--backend onnxruntime runs an ONNX file, which {name} is not: export it once with "
                f"`mixit export {name} --onnx model.onnx`, then separate with --model model.onnx"
            )
        if precision == "bf16":
            problems.append(
                "--precision bf16 needs --backend torch: the ONNX graph computes in float32 (use --precision fp32 or auto)"
            )
        if device not in ("auto", "cpu"):
            problems.append(
                f"--device {device}: the onnxruntime backend runs on the CPU (use --device cpu, or --backend torch)"
            )
    elif onnx_file:
        problems.append(f"{model} is an ONNX file: run it with --backend onnxruntime (or leave --backend at auto)")
    if problems:
        raise PlanError("the model cannot run as asked:", problems)
    if backend == "onnxruntime":
        try:
            return OnnxNetwork(model)
        except OnnxError as e:
            raise SeparationError(str(e)) from e
    torch_device = pick_device(device)
    net = load_model(resolve_model(model, progress=progress)).to(torch_device).eval()
    return prepare(net, device=torch_device, precision=precision)


def separate_many(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model: str | None = None,
    stems: Sequence[str] | None = None,
    two_stems: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    ext: str = "wav",
    bits: str = "24",
    sample_rate: int | None = None,
    skip_existing: bool = False,
    options: ChunkOptions = ChunkOptions(),
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    console=None,
) -> BatchSummary:
    """`mixit separate`: find the inputs, get the model, name the outputs, separate.

    Problems with inputs, names, options or the model are raised before any separation;
    problems with single files end up in the summary's ``failed``.

    Args:
        inputs: files and folders (walked recursively).
        out_dir: output folder.
        model: a path for :func:`mixitcli.model.load_model` or a published model name
            (:mod:`mixitcli.registry`; None: the default model), or a .onnx file of
            `mixit export --onnx`.
        stems: stems to write (None: all of the model's outputs).
        two_stems: write this stem and ``no_<stem>``, the sum of the model's other outputs (demucs'
            --two-stems); any model with two or more outputs, the published 4-stem ones included.
        template, ext, bits, sample_rate, skip_existing: see :func:`plan` and :func:`run_jobs`.
        options: chunking.
        device, precision, backend: where and how the model runs (:func:`load_network`).
        console: a rich Console for progress (None: no progress display).

    Raises:
        PlanError, SeparationError, RegistryError, ModelLoadError: before any work is done.
        Interrupted: a stop signal arrived; the stems being written were deleted.
    """
    with raise_on_stop():
        try:
            return _separate_many(
                inputs,
                out_dir,
                model=model,
                stems=stems,
                two_stems=two_stems,
                template=template,
                ext=ext,
                bits=bits,
                sample_rate=sample_rate,
                skip_existing=skip_existing,
                options=options,
                device=device,
                precision=precision,
                backend=backend,
                console=console,
            )
        except Interrupted as e:
            raise Interrupted(
                e.signum,
                f"{e}. No partial stem file is left and finished songs are kept: run the same "
                "command with --skip-existing to separate the rest.",
            ) from None


def _separate_many(
    inputs,
    out_dir,
    *,
    model,
    stems,
    two_stems,
    template,
    ext,
    bits,
    sample_rate,
    skip_existing,
    options,
    device,
    precision,
    backend,
    console,
) -> BatchSummary:
    if bits == "float" and ext != "wav":
        raise SeparationError(f"--bits float needs --format wav (got --format {ext})")
    if stems and two_stems:
        raise SeparationError("give --stems or --two-stems, not both (--two-stems STEM writes STEM and no_STEM)")
    check_template(template)
    found = find_inputs(inputs, exclude=Path(out_dir))
    net = load_network(model, backend=backend, device=device, precision=precision, progress=console is not None)
    if two_stems is not None:
        stems = two_stem_outputs(two_stems, tuple(net.stems))
    else:
        stems = list(stems) if stems else list(net.stems)
        unknown = [s for s in stems if s not in net.stems]
        if unknown:
            raise SeparationError(
                f"--stems: unknown stem(s) {', '.join(unknown)}; this model outputs {', '.join(net.stems)}"
            )
    found = without_own_outputs(found, out_dir, stems=stems, template=template, ext=ext)
    if not found:
        raise PlanError(
            "cannot read the inputs:", [f"{', '.join(map(str, inputs))}: only this command's own outputs, no songs"]
        )
    jobs = plan(found, out_dir, stems=stems, template=template, ext=ext)
    reporter = RichReporter(console) if console is not None else None
    return run_jobs(
        net,
        jobs,
        options=options,
        sample_rate=sample_rate,
        bits=bits,
        skip_existing=skip_existing,
        reporter=reporter,
    )
