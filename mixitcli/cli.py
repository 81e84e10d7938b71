"""The `mixit` command line: one short function per subcommand (parse, validate, call, print).

Library code lives elsewhere; this module only maps options to library calls and typed
errors to clear messages and exit codes. Heavy imports happen inside the commands, so
`mixit --help` is instant.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from mixitcli import __version__

COMMAND_ORDER = (
    # the pipeline
    "prepare-fma",
    "prepare-musdb",
    "prepare-stems",
    "pretrain",
    "select-channels",
    "finetune",
    "freeze-finetune",
    "average",
    "export",
    "separate",
    "eval",
    "report",
    "listen",
    # helpers
    "make-demo-data",
    "plot",
    "models",
)
"""The order of `mixit --help` (commands register anywhere below). A new command: put its name
here, where it belongs in the pipeline; a command not listed comes last."""


class _Commands(TyperGroup):
    """The app's command group. `mixit --help` lists the commands in :data:`COMMAND_ORDER`; in
    every command, an OS error (full disk, read-only or unwritable folder, I/O error), a
    StorageError or a folder locked by another command (:class:`mixitcli.lock.LockError`)
    becomes one clear message and exit code 1, never a traceback (issue 11), a stop signal
    (:class:`mixitcli.signals.Interrupted`) its message and 128 + its number, and a
    :class:`mixitcli.storage.StorageWarning` of the library a ``warning:`` line."""

    def list_commands(self, ctx) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def invoke(self, ctx):
        import warnings

        from mixitcli.lock import LockError
        from mixitcli.signals import Interrupted
        from mixitcli.storage import StorageError, StorageWarning, describe_os_error

        default = warnings.showwarning

        def show(message, category, *where) -> None:
            if issubclass(category, StorageWarning):
                console.print(f"[yellow]warning:[/] {message}", highlight=False)
            else:
                default(message, category, *where)

        with warnings.catch_warnings():  # the library's StorageWarnings, every time, as warning lines
            warnings.simplefilter("always", StorageWarning)
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except (StorageError, LockError) as e:
                fail(str(e))
            except OSError as e:
                fail(describe_os_error(e))
            except Interrupted as e:  # a stop signal: say what happened, exit 128 + its number
                if not e.quiet:
                    console.print(f"[yellow]stopped:[/] {e}", highlight=False)
                raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Commands,
    name="mixit",
    help=(
        "Music source separation with MixIT pre-training (Saijo & Bando, WASPAA 2025).\n\n"
        "Pipeline: prepare-fma / prepare-musdb -> pretrain -> select-channels -> "
        "finetune / freeze-finetune -> separate / eval."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: long lines are left to the terminal, so URLs and paths are never broken by newlines
console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mixit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mixit: BS-Locoformer music source separation with MixIT pre-training."""
    from mixitcli.allocator import keep_freed_memory

    keep_freed_memory()  # large CPU tensors reuse freed memory instead of new pages


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``. The message is printed as it is: square
    brackets in it (a file name, ``pip install 'mixit-mss[onnx]'``) are not markup."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


PREPARE_FMA_HELP = """Cut FMA (or any folder of music) into 10 s clips for MixIT pre-training.

Per file (docs/method.md §2.1): files below 44.1 kHz are dropped, higher rates are resampled to 44.1 kHz, mono files are dropped (unless --keep-mono); 10 s clips every 5 s, plus one ending at the track's end; silent clips are dropped. Broken files (corrupt, truncated, empty, not audio) are listed in rejected.jsonl and never stop the run.

Split: with fma_metadata/tracks.csv, FMA's own (training -> train, validation -> valid; test tracks are left out and counted), as the authors did; otherwise --valid-fraction of the tracks by a hash of the track key.

Writes DIR/manifest.jsonl (one line per clip), DIR/rejected.jsonl, DIR/summary.json, DIR/index.npz (for the samplers) and the audio store under DIR/shards/I-of-N/audio/ (the kept audio once, 16-bit). Re-running the same command resumes a stopped or killed run: finished files are not decoded again.

Several machines: run --shard 0/N ... --shard N-1/N with the same --out. On one shared disk the last shard to finish writes the manifest; otherwise copy every DIR/shards/* folder into one DIR and run `mixit prepare-fma --merge --out DIR`.
"""


@app.command("prepare-fma", help=PREPARE_FMA_HELP)
def prepare_fma(
    root: Optional[Path] = typer.Argument(
        None, help="Folder holding fma_<subset>/ (and fma_metadata/), or fma_<subset>/ itself."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder DIR (created; re-use it to resume)."),
    subset: Optional[str] = typer.Option(None, help="FMA subset: small, medium, large or full (needed with ROOT)."),
    audio_dir: Optional[Path] = typer.Option(
        None, "--audio-dir", help="Instead of ROOT: any folder tree of audio files (mp3, flac, ogg, wav, ...)."
    ),
    metadata: Optional[Path] = typer.Option(
        None,
        help="Folder holding tracks.csv (default: fma_metadata/ beside the audio). Without one, every audio file is used.",
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1, help="Worker processes (0: run in this process).", show_default="the number of CPU cores"
    ),
    shard: str = typer.Option("0/1", help="I/N: process only shard I (0-based) of N; see above."),
    valid_fraction: Optional[float] = typer.Option(
        None,
        help="Share of tracks (not clips) held out for validation, chosen by a hash of the track key; rounded up to at least 2 tracks whenever 4 or more are kept. Default: FMA's own split when tracks.csv is there (training -> train, validation -> valid, test left out), else 0.01. With --merge: re-split by hash.",
    ),
    silence_rule: str = typer.Option(
        "clip",
        help="clip: drop clips with more than 5 of ten 1 s intervals silent (paper). track: the official script's rule (0.5 s chunks; one bad clip drops the whole track).",
    ),
    silence_db: Optional[float] = typer.Option(
        None, help="Count an interval as silent below this mean power in dB re full scale (default: only exact zeros)."
    ),
    keep_mono: bool = typer.Option(
        False,
        "--keep-mono",
        help="Duplicate mono files to stereo instead of rejecting them (the official recipe keeps stereo only).",
    ),
    merge: bool = typer.Option(
        False, "--merge", help="Only merge the finished shards in --out into the manifest (no ROOT needed)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    from mixitcli.data import DataError, fma
    from mixitcli.data.clips import ClipRules

    try:
        if merge:
            summary = fma.merge_shards(out, valid_fraction=valid_fraction)
        else:
            if (root is None) == (audio_dir is None):
                raise typer.BadParameter("give either ROOT (with --subset) or --audio-dir DIR")
            if root is not None and subset is None:
                raise typer.BadParameter("--subset is needed with ROOT (small, medium, large or full)")
            if audio_dir is not None and (subset or metadata):
                raise typer.BadParameter("--subset and --metadata go with ROOT (the FMA layout), not with --audio-dir")
            source = fma.locate_audio_dir(audio_dir) if audio_dir else fma.locate_fma(root, subset, metadata)
            rules = ClipRules(silence_rule=silence_rule, silence_db=silence_db, keep_mono=keep_mono)
            config = fma.PrepareConfig(
                out=out,
                rules=rules,
                workers=workers,
                shard=fma.parse_shard(shard),
                valid_fraction=valid_fraction,
                progress=progress,
            )
            summary = fma.prepare_fma(source, config)
    except (DataError, ValueError) as e:
        fail(str(e))
    if summary is None:
        console.print(
            f"shard {shard} done; the other shards are not finished yet (then: mixit prepare-fma --merge --out {out})"
        )
    else:
        console.print(fma.describe(summary), highlight=False)


@app.command("prepare-musdb")
def prepare_musdb(
    root: Path = typer.Argument(
        ..., help="The MUSDB18-HQ folder holding train/ and test/ (WAV stems; .stem.mp4 is refused)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder DIR."),
    workers: int = typer.Option(
        min(os.cpu_count() or 1, 8),
        help="Worker processes for the activity detection (0: in this process).",
        show_default="CPU cores, at most 8",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
    valid_tracks: Optional[int] = typer.Option(
        None,
        "--valid-tracks",
        help="Only for a tree without the standard validation tracks (your own stems): hold out N training tracks for validation, chosen by a hash of the name (default: about 10 %, at least 2).",
    ),
) -> None:
    """Check MUSDB18-HQ, find each training stem's salient 8 s segments, list the splits.

    `mixit prepare-stems` with MUSDB18-HQ's defaults: the stems vocals, drums, bass and other, and the five files every song must have. Checks every file first and reports all problems at once. The standard 14 validation tracks are taken out of train (86 left); a tree holding none of them (your own stems) gets --valid-tracks training tracks held out for validation instead. Source activity detection (docs/method.md §2.2) runs on every stem of the training tracks.

    Writes DIR/salient/<stem>.jsonl (salient segments per stem), DIR/tracks.jsonl (each song's files), DIR/train.txt, DIR/valid.txt, DIR/test.txt (track names) and DIR/summary.json.
    """
    from mixitcli.data.musdb import musdb_spec

    _prepare(root, out, musdb_spec(valid_tracks), workers=workers, progress=progress)


PREPARE_STEMS_HELP = """Prepare any set of stems for fine-tuning: your own multitracks, MoisesDB, or MUSDB18-HQ with other stems (docs/stems.md).

Reads ROOT/{train,test}/<song>/<stem>.wav (every WAV file of a song folder is a stem named after the file; mixture.wav, when present, is the mixture), or a MoisesDB tree with --layout moisesdb. Stems found but not in --stems are summed into --rest NAME, or dropped without it; a song without a listed stem gets silence for it; a song without mixture.wav gets the sum of its stems as mixture, and a mixture that is not the sum of its stems gets a warning with the residual's level. Every file of a song must be stereo 44.1 kHz and of one length (an error names each file that is not).

Then, as prepare-musdb: validation songs held out of train (the standard MUSDB18-HQ validation tracks when present, else --valid-tracks by a hash of the name) and the source activity detection of docs/method.md §2.2 on every stem of the training songs. `mixit prepare-musdb` is this command with MUSDB18-HQ's defaults.

Writes DIR/summary.json (with the stem set), DIR/tracks.jsonl, DIR/salient/<stem>.jsonl, DIR/train.txt, DIR/valid.txt, DIR/test.txt and, for stems that are no single file (sums, a missing mixture), float WAVs under DIR/audio/. finetune, select-channels and eval --data take their stems from it.
"""


class Layout(str, Enum):
    folders = "folders"
    moisesdb = "moisesdb"


@app.command("prepare-stems", help=PREPARE_STEMS_HELP)
def prepare_stems(
    root: Path = typer.Argument(
        ..., help="The collection: ROOT/{train,test}/<song>/<stem>.wav, or a MoisesDB tree with --layout moisesdb."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder DIR."),
    stems: Optional[str] = typer.Option(
        None,
        "--stems",
        help="Comma-separated stems to keep, in output order, e.g. guitar,piano (default: every stem name found; the four MUSDB18-HQ stems in the order bass,drums,vocals,other, others alphabetically).",
    ),
    rest: Optional[str] = typer.Option(
        None,
        "--rest",
        help="Name of one more stem that sums every stem found but not in --stems (e.g. --stems guitar --rest rest); without it those stems are dropped.",
    ),
    layout: Layout = typer.Option(
        Layout.folders,
        "--layout",
        help="folders: ROOT/{train,test}/<song>/<stem>.wav. moisesdb: MoisesDB's track folders (data.json and one folder of WAVs per stem category, which sum to that stem); categories are the stem names (vocals, bass, drums, guitar, piano, other_keys, bowed_strings, wind, percussion, other_plucked, other).",
    ),
    valid_tracks: Optional[int] = typer.Option(
        None,
        "--valid-tracks",
        help="Training songs held out for validation when ROOT/train holds none of the standard MUSDB18-HQ validation tracks, chosen by a hash of the name (default: about 10 %, at least 2).",
    ),
    test_tracks: Optional[int] = typer.Option(
        None,
        "--test-tracks",
        help="--layout moisesdb only (MoisesDB has no split): tracks held out for testing, chosen by a hash of the track folder's name (default: about 20 %, at least 1).",
    ),
    workers: int = typer.Option(min(os.cpu_count() or 1, 8), help="Worker processes (0: in this process)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    from mixitcli.data.prepare_stems import StemsSpec
    from mixitcli.stems import StemsError, parse_stems

    try:
        spec = StemsSpec(
            layout=layout.value,
            stems=parse_stems(stems) if stems is not None else None,
            rest=rest,
            valid_tracks=valid_tracks,
            test_tracks=test_tracks,
        )
    except StemsError as e:
        fail(str(e))
    _prepare(root, out, spec, workers=workers, progress=progress)


def _prepare(root: Path, out: Path, spec, *, workers: int, progress: bool) -> None:
    """prepare-stems and prepare-musdb: run, then print the summary and its warnings."""
    from mixitcli.data import DataError
    from mixitcli.data.prepare_stems import describe, warnings
    from mixitcli.data.prepare_stems import prepare_stems as run
    from mixitcli.lock import folder_lock
    from mixitcli.stems import StemsError

    try:
        with folder_lock(out):  # one writer per folder (a LockError names the other one)
            summary = run(root, out, spec, workers=workers, progress=progress)
    except (DataError, StemsError) as e:
        fail(str(e))
    console.print(describe(summary), highlight=False)
    for note in warnings(summary):
        console.print(f"[yellow]warning:[/] {note}", highlight=False)


MAKE_DEMO_DATA_HELP = """Synthesise music for the demo and tests: no download needed.

Each song is made from its seed with numpy: a tempo, a key, chord progressions and sections (intro, verse, break, chorus, groove, outro) that switch stems off (no vocals in the intro, no drums in a break, ...); drums, a bass line, a sung-like lead with vowel formants ("vocals") and chords (pads, arpeggios, stabs: "other"), each with its own timbre, pan, room and level.

Writes OUT/unlabeled/ (FMA-like mixtures in FLAC, MP3, WAV and Ogg; every fifth at 48 kHz), OUT/musdb/{train,test}/<Artist - Title>/{mixture,vocals,drums,bass,other}.wav (MUSDB18-HQ layout: 16-bit stereo 44.1 kHz, mixture = exact sum of the stems) and OUT/demo.json (the summary). The same options always give the same files. The defaults (40 + 16 songs of 30 s) take about 30 s on one core and 520 MB of disk.

Then: mixit prepare-fma --audio-dir OUT/unlabeled --out ... and mixit prepare-musdb OUT/musdb --out ...
"""


@app.command("make-demo-data", help=MAKE_DEMO_DATA_HELP)
def make_demo_data(
    out: Path = typer.Argument(..., help="Output folder OUT (created)."),
    songs: int = typer.Option(40, "--songs", help="Unlabeled songs (mixtures only) in OUT/unlabeled/."),
    musdb_train: int = typer.Option(
        12, "--musdb-train", help="Songs with stems in OUT/musdb/train/, the validation ones included."
    ),
    musdb_valid: Optional[int] = typer.Option(
        None,
        "--musdb-valid",
        help="How many of the train songs carry standard MUSDB validation names, so that prepare-musdb puts them in the validation split (0-14; default: min(3, half of --musdb-train)).",
    ),
    musdb_test: int = typer.Option(4, "--musdb-test", help="Songs with stems in OUT/musdb/test/."),
    seconds: float = typer.Option(
        30.0,
        "--seconds",
        help="Length of every song in seconds (use >= 10: prepare-fma cuts 10 s clips and prepare-musdb 8 s segments).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of everything (>= 0); another seed gives other songs."),
    guitar: bool = typer.Option(
        False,
        "--guitar",
        help="Give every song of OUT/musdb a fifth instrument in its own stem, guitar.wav: a plucked guitar-like line (for `make demo-stems`: prepare-stems --stems guitar --rest rest). The other four stems stay as without it.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace OUT/unlabeled and OUT/musdb left by an earlier make-demo-data run."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    from mixitcli.demo.data import DemoDataError, describe
    from mixitcli.demo.data import make_demo_data as run

    try:
        summary = run(
            out,
            songs=songs,
            musdb_train=musdb_train,
            musdb_test=musdb_test,
            musdb_valid=musdb_valid,
            seconds=seconds,
            seed=seed,
            guitar=guitar,
            overwrite=overwrite,
            progress=progress,
        )
    except DemoDataError as e:
        fail("make-demo-data cannot start:\n" + "\n".join(f"  - {p}" for p in e.problems))
    console.print(describe(summary), highlight=False)


# ----------------------------------------------------------------------------- training
# `mixit pretrain`, `finetune` and `freeze-finetune` offer one option per field of the stage's
# dataclass (mixitcli/train/config.py): flag (the field name with dashes), help, panel and
# default come from the field, and the library checks the values. None means "not given": the
# recipe or the stage's default applies. A new training option is a new field, nothing here.

_RUN_OPTIONS = {
    "config": (
        Optional[Path],
        typer.Option(None, "--config", help="YAML recipe (see recipes/); command-line options override it."),
    ),
    "resume": (
        bool,
        typer.Option(
            False,
            "--resume",
            help="Continue the run in --out from checkpoints/last.pt, exactly where it stopped. "
            "Ctrl-C, SIGTERM and SIGUSR1 write last.pt at the next step boundary, then exit with 128 + the signal's number.",
        ),
    ),
    "auto_resume": (
        bool,
        typer.Option(
            False,
            "--auto-resume",
            help="Resume when --out already holds a run, else start it (for scripts and preemptible jobs).",
        ),
    ),
}


def _train(stage: str, options: dict) -> None:
    """Start or continue a run of ``stage`` (defaults < --config < options) and train it."""
    from mixitcli.model.checkpoints import CheckpointError
    from mixitcli.signals import raise_on_stop
    from mixitcli.train import ConfigError, TrainingError, plan_run, train

    recipe, resume, auto = options.pop("config"), options.pop("resume"), options.pop("auto_resume")
    try:
        with raise_on_stop():  # during set-up; the loop defers a stop to its next step boundary and saves
            plan = plan_run(stage, command_line=options, recipe=recipe, resume=resume, auto_resume=auto)
            train(plan.config, resume=plan.resume, console=console)
    except (ConfigError, TrainingError, CheckpointError) as e:
        fail(str(e))


def training_command(stage: str, summary: str):
    """The function behind `mixit STAGE`, with one Typer option per field of the stage's
    configuration that the stage offers, after --config, --resume and --auto-resume."""
    import inspect

    from mixitcli.train.config import STAGE_CONFIGS
    from mixitcli.train.options import options_of

    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
        for name, (kind, opt) in _RUN_OPTIONS.items()
    ]
    for info in options_of(STAGE_CONFIGS[stage]).values():
        if not info.cli or (info.stages is not None and stage not in info.stages):
            continue
        # booleans: --name/--no-name; the rest is text that the library checks, so that every
        # problem is listed at once. An alias is a hidden twin, folded into the option below.
        for i, flag in enumerate(info.flags):
            if info.is_flag:
                kind, decls = Optional[bool], [f"{flag}/--no-{flag[2:]}"]
            else:
                kind, decls = (Optional[tuple[(str,) * info.nargs]] if info.nargs > 1 else Optional[str]), [flag]
            opt = typer.Option(
                None,
                *decls,
                help=info.help_line(),
                metavar=None if info.is_flag else info.placeholder(),
                rich_help_panel=info.group,
                hidden=i > 0,
            )
            name = f"{info.name}__alias{i}" if i else info.name
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind))

    def command(**options) -> None:
        for key in [k for k in options if "__alias" in k]:
            value = options.pop(key)
            if value is not None:
                options[key.split("__alias")[0]] = value
        _train(stage, options)

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = summary
    return command


app.command("pretrain")(
    training_command("pretrain", "Pre-train BS-Locoformer with MixIT (12 outputs) on a prepare-fma folder.")
)
app.command("finetune")(
    training_command(
        "finetune",
        "Supervised fine-tuning on a prepare-musdb folder: 4 outputs (bass, drums, vocals, other), from scratch, "
        "or from pre-training (--init with --selection).",
    )
)
app.command("freeze-finetune")(
    training_command(
        "freeze-finetune",
        "Fine-tuning with the separator frozen: only the band-split encoder and the mask decoder train "
        "(200 epochs by default). Paper Table 2.",
    )
)


@app.command("select-channels")
def select_channels(
    checkpoint: Path = typer.Argument(
        ..., help="Pre-trained 12-output model: checkpoint, run folder (averaged best) or official folder."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        "--musdb",
        help="A prepare-stems or prepare-musdb output folder: its validation songs are used (one is enough), and its stems are the ones selected for (1 to 12 of them).",
    ),
    out: Path = typer.Option(..., "--out", help="Selection JSON to write; a heatmap PNG is written beside it."),
    chunk_seconds: float = typer.Option(6.0, "--chunk-seconds", help="Chunk length in seconds (paper: 6)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Chunks separated together."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
) -> None:
    """Pick, for each stem of --data (bass, drums, vocals and other for MUSDB18-HQ), the MixIT output that matches it most often on its validation songs (docs/method.md §6).

    Two stems never share an output: the outputs chosen maximise the total count over all stems (ties: the first stem takes the lowest output). Prints, per stem, the chunks where it is active, the share of them its output won, and the runner-up.
    """
    from mixitcli.data import DataError
    from mixitcli.devices import DeviceError, pick_device
    from mixitcli.model import ModelLoadError, load_model
    from mixitcli.model.checkpoints import CheckpointError
    from mixitcli.selection import SelectionError, plot_counts
    from mixitcli.selection import select_channels as run
    from mixitcli.storage import atomic_write_text

    try:
        from mixitcli.data.samplers import MusdbValidation

        songs = MusdbValidation(data, subset="valid")
        model = load_model(checkpoint)
        with console.status("separating validation chunks") as status:
            selection = run(
                model,
                songs,
                stems=songs.stems,
                chunk_seconds=chunk_seconds,
                batch_size=batch_size,
                device=pick_device(device),
                progress=lambda name: status.update(f"done: {name}"),
            )
    except (ModelLoadError, CheckpointError, SelectionError, DeviceError, DataError) as e:
        fail(str(e))
    selection.checkpoint = str(checkpoint)
    atomic_write_text(out, selection.to_json())
    plot_counts(selection, out.with_suffix(".png"))
    for note in selection.conflicts + selection.warnings:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    _print_selection(selection)
    console.print(f"selected {dict(zip(selection.stems, selection.selected))} from {selection.chunks} chunks -> {out}")


def _print_selection(selection) -> None:
    """The per-stem report of select-channels as a table."""
    from rich.table import Table

    table = Table(title="outputs chosen per stem", title_justify="left")
    for column in ("stem", "active chunks", "output", "share", "runner-up", "its share"):
        table.add_column(column, justify="left" if column == "stem" else "right")
    percent = lambda x: "–" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    for r in selection.report:
        table.add_row(
            r["stem"],
            str(r["active_chunks"]),
            str(r["output"]),
            percent(r["share"]),
            "–" if r["runner_up"] is None else str(r["runner_up"]),
            percent(r["runner_up_share"]),
        )
    console.print(table)


@app.command("average")
def average(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Path = typer.Option(..., "--out", help="Model file to write (a mixit checkpoint that every command loads)."),
    best: Optional[int] = typer.Option(
        None, "--best", help="Average only the best N kept checkpoints (default: all kept, up to 5)."
    ),
) -> None:
    """Average the weights of a run's best checkpoints (the paper evaluates this average)."""
    from mixitcli.model import model_to_dict
    from mixitcli.model.checkpoints import CheckpointError, average_run, best_checkpoints, with_checksum
    from mixitcli.train.checkpoint import atomic_save

    try:
        paths = best_checkpoints(run)[:best] if best else best_checkpoints(run)
        model = average_run(run, best=best)
    except CheckpointError as e:
        fail(str(e))
    atomic_save(with_checksum(model_to_dict(model)), out)
    console.print(f"averaged {len(paths)} checkpoint(s): {', '.join(p.name for p in paths)} -> {out}")


@app.command("plot")
def plot(
    run: Path = typer.Argument(..., help="Run folder (reads metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default RUN/curves.png)."),
) -> None:
    """Draw training and validation loss and the learning rate against steps."""
    from mixitcli.train.plot import PlotError, plot_run

    try:
        path = plot_run(run, out)
    except PlotError as e:
        fail(str(e))
    console.print(f"wrote {path}")


# -- separate ------------------------------------------------------------------------------


class OutputFormat(str, Enum):
    wav = "wav"
    flac = "flac"
    mp3 = "mp3"


class Bits(str, Enum):
    b16 = "16"
    b24 = "24"
    float = "float"


class Window(str, Enum):
    equal = "equal"
    triangle = "triangle"
    hann = "hann"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


PRECISION_HELP = (
    "How the model computes. fp32: float32, the same output as every earlier version, bit for bit. "
    "bf16: bfloat16 (on a CPU a copy of the model prepared for it, about 2x faster on CPUs with AVX512-BF16 "
    "or AMX, stems about 40 dB from float32; on a GPU autocast). auto: bf16 on a CPU with native bfloat16, "
    "else fp32 (GPUs included). The summary line says which ran."
)


def _precision(precision: Precision, bf16: bool) -> str:
    """--precision, with --bf16 as its old alias (--bf16 = --precision bf16)."""
    if bf16 and precision not in (Precision.auto, Precision.bf16):
        fail(f"--bf16 means --precision bf16; it contradicts --precision {precision.value} (give one of them)")
    return "bf16" if bf16 else precision.value


MODEL_HELP = (
    "A mixit checkpoint file, a training run folder (its best checkpoints averaged), an official "
    "model folder (checkpoints/model.pth + merged_config.yaml), or the name of a published model "
    "(`mixit models` lists them; downloaded once through huggingface_hub into its cache, "
    "$HF_HOME/hub, and verified; HF_HUB_OFFLINE=1 and HF_ENDPOINT are honoured). Default: "
    "sup.musdb18hq.bslocoformer-medium.mixit-fma-large-pretrained."
)


@app.command("separate")
def separate_command(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Audio files or folders (walked recursively); any format soundfile or ffmpeg decodes, any sample rate, mono or stereo.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    stems: Optional[str] = typer.Option(
        None, "--stems", help="Comma-separated stems to write, e.g. vocals,drums (default: all of the model's stems)."
    ),
    two_stems: Optional[str] = typer.Option(
        None,
        "--two-stems",
        metavar="STEM",
        help="Write two files: STEM and no_STEM, the sum of the model's other outputs (e.g. --two-stems vocals: vocals and no_vocals, an accompaniment). Works with any model of two or more outputs.",
    ),
    filename: str = typer.Option(
        "{track}/{stem}.{ext}",
        "--filename",
        help="Output path under --out. Fields: {track} input name without extension, {stem}, {ext}, {folder} input folder relative to the INPUT folder, {parent} name of the input's folder.",
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.wav, "--format", help="Output format."),
    bits: Bits = typer.Option(
        Bits.b24,
        "--bits",
        help="Sample format: 16 or 24-bit integer (wav, flac) or 32-bit float (wav only). Ignored for mp3.",
    ),
    sample_rate: Optional[int] = typer.Option(
        None,
        "--sample-rate",
        min=8000,
        help="Sample rate of the stems in Hz (default: the input's; the model runs at 44.1 kHz).",
    ),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output files all exist."),
    chunk: float = typer.Option(12.0, "--chunk", help="Chunk length in seconds (paper: 12)."),
    hop: float = typer.Option(6.0, "--hop", help="Hop between chunks in seconds, at most --chunk (paper: 6)."),
    window: Window = typer.Option(
        Window.equal,
        "--window",
        help="Cross-fade of overlapping chunks: equal weights (paper) or a triangle / Hann fade.",
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Chunks per forward pass (default: 4 on a GPU, 1 on the CPU); the output does not change.",
    ),
    device: Device = typer.Option(
        Device.auto, "--device", help="Where the model runs: auto = CUDA, else MPS, else CPU."
    ),
    precision: Precision = typer.Option(Precision.auto, "--precision", help=PRECISION_HELP),
    backend: Backend = typer.Option(
        Backend.auto,
        "--backend",
        help="torch, or onnxruntime for a model exported by `mixit export MODEL --onnx FILE.onnx` (float32, CPU; needs pip install 'mixit-mss\\[onnx]'). auto: onnxruntime for a .onnx --model, else torch.",
    ),
    bf16: bool = typer.Option(False, "--bf16", help="The same as --precision bf16 (the earlier option)."),
) -> None:
    """Separate songs into the model's stems (bass, drums, vocals and other for the published models): INPUT... -> OUT/<track>/<stem>.wav.

    Songs are read and stems written in blocks, so memory does not grow with the song's length. A file that fails is reported and the others are still separated; the exit code is then 1. Input files are never overwritten.

    Each stem file is locked while it is written: another `mixit separate` writing the same stems fails that song, naming this one (docs/reliability.md). Ctrl-C, SIGTERM or SIGUSR1 stop at once, leaving no partial file; run again with --skip-existing to go on.
    """
    from mixitcli.batch import separate_many
    from mixitcli.separate import ChunkOptions

    stem_list = [s.strip() for s in stems.split(",") if s.strip()] if stems else None
    try:
        options = ChunkOptions(chunk_s=chunk, hop_s=hop, window=window.value, batch_size=batch_size)
        summary = separate_many(
            inputs,
            out,
            model=model,
            stems=stem_list,
            two_stems=two_stems,
            template=filename,
            ext=fmt.value,
            bits=bits.value,
            sample_rate=sample_rate,
            skip_existing=skip_existing,
            options=options,
            device=device.value,
            precision=_precision(precision, bf16),
            backend=backend.value,
            console=console,
        )
    except _user_errors() as e:
        fail(str(e))
    console.print(summary.line(), highlight=False)
    if summary.failed:
        fail(f"{len(summary.failed)} file(s) failed: " + ", ".join(str(p) for p, _ in summary.failed))


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help=MODEL_HELP.split(" Default:")[0]),
    onnx: Path = typer.Option(
        ..., "--onnx", help="The ONNX file to write (replaced only when the new one is complete and checked)."
    ),
) -> None:
    """Export a model as an ONNX graph, for `mixit separate --model FILE.onnx` (onnxruntime, no torch needed to run it).

    The graph maps the mixture's spectrum (real and imaginary planes, and its per-channel scale) to the stems' masked spectra; the STFT and iSTFT run outside it, in numpy. Batch and frames are dynamic. The export is checked: onnxruntime's separation of 2 s of noise against torch's, to 1e-4 (relative). Needs pip install 'mixit-mss\\[onnx]'.
    """
    from mixitcli.export import ExportError, export_onnx, require
    from mixitcli.model import load_model
    from mixitcli.registry import resolve_model

    try:
        require()  # before a model is loaded, or downloaded
        result = export_onnx(load_model(resolve_model(model)), onnx)
    except (ExportError, *_user_errors()) as e:
        fail(str(e))
    console.print(
        f"wrote {result.path} ({result.bytes / 1e6:.1f} MB) in {result.seconds:.0f} s; checked: onnxruntime against torch, "
        f"relative error {result.error:.1e} on {result.check_seconds:g} s of noise",
        highlight=False,
    )


# -- eval and report -------------------------------------------------------------------------


class Subset(str, Enum):
    test = "test"
    valid = "valid"
    train = "train"


@app.command("eval")
def eval_command(
    musdb: Optional[Path] = typer.Option(
        None, "--musdb", help="MUSDB18-HQ root (holding train/ and test/): its four stems."
    ),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="Instead of --musdb: a prepare-stems or prepare-musdb output folder; its songs of --subset are scored per stem of its stem set, and the model must have those stems.",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Results folder: results.jsonl / results.csv per track, summary.md / summary.json, and estimates/ when --model is given (default with --estimates: that folder). Run again with the same --out to resume.",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Separate with this model first (a path or a published model name, as in `mixit separate`); stems go to OUT/estimates/<track>/<stem>.wav (float WAV).",
    ),
    estimates: Optional[Path] = typer.Option(
        None, "--estimates", help="Score existing stems instead: a folder of <track>/<stem>.wav (any audio format)."
    ),
    subset: Subset = typer.Option(
        Subset.test,
        "--subset",
        help="Subset: test (MUSDB18-HQ: the paper's 50 tracks), valid (the standard 14, or the held-out ones) or train.",
    ),
    workers: int = typer.Option(
        2, "--workers", "-j", min=0, help="Processes scoring tracks in parallel (0: score in this process)."
    ),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs (with --model)."),
    precision: Precision = typer.Option(
        Precision.fp32,
        "--precision",
        help="How the model computes (with --model): fp32 (default here, so that scores are the float32 model's), bf16 or auto, as in `mixit separate`.",
    ),
    bf16: bool = typer.Option(False, "--bf16", help="The same as --precision bf16 (the earlier option)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Chunks per forward pass (with --model; default: 4 on a GPU, 1 on the CPU)."
    ),
) -> None:
    """Score separations on MUSDB18-HQ (--musdb) or any prepared stems folder (--data): cSDR (museval BSSEval v4, median) and uSDR (paper and MDX21 variants, mean) per stem, as the paper's Table 1.

    Give --model to separate the tracks first (12 s chunks, 6 s hop), or --estimates to score stems that exist. A stem a song lacks is silence in its reference, so its scores are left out. Results are written per track as they are computed, so an interrupted run resumes. Silent stems are scored as the README's "Evaluation: silent stems" defines and are flagged; so are estimates of another length than the reference (scored on the reference's length).

    One command writes a results folder at a time: a second one is refused, naming the first (docs/reliability.md). Ctrl-C, SIGTERM or SIGUSR1 stop at once, leaving no partial file.
    """
    from mixitcli.evaluate import evaluate_musdb

    try:
        evaluate_musdb(
            musdb,
            out,
            data=data,
            model=model,
            estimates=estimates,
            subset=subset.value,
            workers=workers,
            device=device.value,
            precision=_precision(precision, bf16),
            batch_size=batch_size,
            console=console,
        )
    except _user_errors() as e:
        fail(str(e))
    folder = out or estimates
    console.print(
        f"results in {folder}/summary.md, {folder}/summary.json, per track {folder}/results.csv", highlight=False
    )


@app.command("report")
def report_command(
    results: list[str] = typer.Argument(
        ...,
        help="Results of `mixit eval`: summary.json files or their folders, each optionally named LABEL=PATH. Labels or model names like bslocoformer-medium, fma-large, freeze (or the paper's S1/S2/M1/M2/L1/L2) place them in Tables 1-3.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for report.md and one bar chart PNG per stem (and the average)."
    ),
) -> None:
    """Assemble several evaluations into the layout of the paper's Tables 1-3 (Markdown) and a bar chart per stem (PNG)."""
    from mixitcli.report import write_report

    try:
        written = write_report(results, out)
    except _user_errors() as e:
        fail(str(e))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


@app.command("models")
def models_command() -> None:
    """List the authors' published models: name, size, parameters, where the paper uses them, and whether they are in the cache.

    Any name can be passed to --model of `mixit separate` and `mixit eval`; it is downloaded once through huggingface_hub (cache: $HF_HOME/hub, default ~/.cache/huggingface/hub) at the pinned revision.
    """
    from rich.table import Table

    from mixitcli import registry

    table = Table(title=f"published models ({registry.HUB_REPO} at {registry.HUB_REVISION[:7]})", title_justify="left")
    for column in ("name", "size", "outputs", "parameters", "paper", "cached"):
        table.add_column(column, no_wrap=column == "name")
    for row in registry.listing():
        name = row["name"] + (" (default)" if row["default"] else "")
        table.add_row(
            name,
            row["size"],
            str(row["outputs"]),
            f"{row['parameters'] / 1e6:.1f} M",
            row["row"],
            "yes" if row["cached"] else "no",
        )
    Console(width=max(console.width, 160)).print(table)
    console.print(f"cache: {registry.cache_dir()}", highlight=False)


class Codec(str, Enum):
    opus = "opus"
    mp3 = "mp3"


@app.command("listen")
def listen_command(
    inputs: list[str] = typer.Argument(
        ...,
        help="`mixit separate` output folders or `mixit eval` results folders, each optionally named LABEL=PATH (as in `mixit report`); several are shown side by side.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for index.html and assets/ (new, empty, or a page written before)."
    ),
    seconds: float = typer.Option(30.0, "--seconds", help="Excerpt length in seconds, where the mixture is loudest."),
    full: bool = typer.Option(False, "--full", help="Whole tracks instead of excerpts."),
    codec: Codec = typer.Option(
        Codec.opus, "--codec", help="opus (WebM, 96 kb/s, small) or mp3 (160 kb/s, plays in old Safari too)."
    ),
    selection: Optional[Path] = typer.Option(
        None,
        "--selection",
        help="A selection JSON (`mixit select-channels`): its counts are shown beside the MixIT outputs out0..out11.",
    ),
    musdb: Optional[Path] = typer.Option(
        None,
        "--musdb",
        help="Where MUSDB18-HQ is now, if it moved since `mixit eval` (the references come from there).",
    ),
    title: Optional[str] = typer.Option(None, "--title", help="Page title (default: the inputs' labels)."),
) -> None:
    """Write a static listening page: players, spectrograms and loudness of every stem, side by side, with the per-track scores of evaluations (sortable). Opens from file:// or any static web host.

    One command writes a page folder at a time: a second one is refused, naming the first. A page whose writing failed (a full disk) or was stopped (Ctrl-C, SIGTERM, SIGUSR1) leaves no partial file, and the same command writes it again (docs/reliability.md).
    """
    from mixitcli.listen import ListenError, write_page

    try:
        index = write_page(
            inputs,
            out,
            seconds=None if full else seconds,
            codec=codec.value,
            selection=selection,
            musdb=musdb,
            title=title,
            console=console,
        )
    except (ListenError, *_user_errors()) as e:
        fail(str(e))
    console.print(f"wrote {index} (open it in a browser)", highlight=False)


def _user_errors() -> tuple[type[Exception], ...]:
    """Typed errors of the library that mean "fix your command", mapped to exit code 1."""
    from mixitcli.audio import AudioError
    from mixitcli.data.errors import DataError
    from mixitcli.devices import DeviceError
    from mixitcli.evaluate import EvalError
    from mixitcli.model import ModelLoadError
    from mixitcli.model.checkpoints import CheckpointError
    from mixitcli.registry import RegistryError
    from mixitcli.report import ReportError
    from mixitcli.separate import SeparationError

    return (
        AudioError,
        CheckpointError,
        DataError,
        DeviceError,
        EvalError,
        ModelLoadError,
        RegistryError,
        ReportError,
        SeparationError,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
