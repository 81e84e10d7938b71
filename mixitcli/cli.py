"""The `mixit` command line: one short function per subcommand (parse, validate, call, print).

Library code lives elsewhere; this module only maps options to library calls and typed
errors to clear messages and exit codes. Heavy imports happen inside the commands, so
`mixit --help` is instant.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from mixitcli import __version__

app = typer.Typer(
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
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mixit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, is_flag=True, help="Print the version and exit."
    ),
) -> None:
    """mixit: BS-Locoformer music source separation with MixIT pre-training."""


def fail(message: str, code: int = 1) -> None:
    """Print an error in red and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _not_implemented(name: str) -> None:
    fail(f"`mixit {name}` is not implemented yet.", code=3)


_PENDING = {
    "prepare-fma": "Scan FMA (or any folder of music), cut 10 s clips, write a manifest.",
    "prepare-musdb": "Validate MUSDB18-HQ, run source activity detection, write manifests.",
    "pretrain": "Pre-train BS-Locoformer with MixIT (12 outputs) on prepared FMA data.",
    "select-channels": "Pick 4 of the 12 MixIT outputs for vocals, drums, bass and other.",
    "finetune": "Supervised fine-tuning on MUSDB18-HQ (from scratch or from pre-training).",
    "freeze-finetune": "Fine-tuning with the separator frozen (encoder and decoder train).",
}


def _register_pending(name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        _not_implemented(name)

    command.__doc__ = f"{summary} (not implemented yet)"
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


for _name, _summary in _PENDING.items():
    _register_pending(_name, _summary)


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


MODEL_HELP = (
    "A mixit checkpoint file, a training run folder (its best checkpoints averaged), an official "
    "model folder (checkpoints/model.pth + merged_config.yaml), or the name of a published model "
    "(downloaded once into $MIXIT_CACHE, default ~/.cache/mixit, and verified). Default: "
    "sup.musdb18hq.bslocoformer-medium.mixit-fma-large-pretrained."
)


@app.command("separate")
def separate_command(
    inputs: List[Path] = typer.Argument(..., help="Audio files or folders (walked recursively); any format soundfile or ffmpeg decodes, any sample rate, mono or stereo."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to write, e.g. vocals,drums (default: all)."),
    filename: str = typer.Option("{track}/{stem}.{ext}", "--filename", help="Output path under --out. Fields: {track} input name without extension, {stem}, {ext}, {folder} input folder relative to the INPUT folder, {parent} name of the input's folder."),
    fmt: OutputFormat = typer.Option(OutputFormat.wav, "--format", help="Output format."),
    bits: Bits = typer.Option(Bits.b24, "--bits", help="Sample format: 16 or 24-bit integer (wav, flac) or 32-bit float (wav only). Ignored for mp3."),
    sample_rate: Optional[int] = typer.Option(None, "--sample-rate", min=8000, help="Sample rate of the stems in Hz (default: the input's; the model runs at 44.1 kHz)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output files all exist."),
    chunk: float = typer.Option(12.0, "--chunk", help="Chunk length in seconds (paper: 12)."),
    hop: float = typer.Option(6.0, "--hop", help="Hop between chunks in seconds, at most --chunk (paper: 6)."),
    window: Window = typer.Option(Window.equal, "--window", help="Cross-fade of overlapping chunks: equal weights (paper) or a triangle / Hann fade."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Chunks per forward pass (default: 4 on a GPU, 1 on the CPU); the output does not change."),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs: auto = CUDA, else MPS, else CPU."),
    bf16: bool = typer.Option(False, "--bf16", help="Run the model in bfloat16 autocast (meant for GPUs; outputs differ slightly from float32)."),
) -> None:
    """Separate songs into bass, drums, vocals and other: INPUT... -> OUT/<track>/<stem>.wav.

    Songs are read and stems written in blocks, so memory does not grow with the song's length. A file that fails is reported and the others are still separated; the exit code is then 1. Input files are never overwritten.
    """
    from mixitcli.batch import separate_many
    from mixitcli.separate import ChunkOptions

    stem_list = [s.strip() for s in stems.split(",") if s.strip()] if stems else None
    try:
        options = ChunkOptions(chunk_s=chunk, hop_s=hop, window=window.value, batch_size=batch_size)
        summary = separate_many(
            inputs, out, model=model, stems=stem_list, template=filename, ext=fmt.value, bits=bits.value,
            sample_rate=sample_rate, skip_existing=skip_existing, options=options, device=device.value,
            bf16=bf16, console=console,
        )
    except _user_errors() as e:
        fail(str(e))
    console.print(summary.line(), highlight=False)
    if summary.failed:
        fail(f"{len(summary.failed)} file(s) failed: " + ", ".join(str(p) for p, _ in summary.failed))


# -- eval and report -------------------------------------------------------------------------


class Subset(str, Enum):
    test = "test"
    valid = "valid"
    train = "train"


@app.command("eval")
def eval_command(
    musdb: Path = typer.Option(..., "--musdb", help="MUSDB18-HQ root (holding train/ and test/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder: results.jsonl / results.csv per track, summary.md / summary.json, and estimates/ when --model is given (default with --estimates: that folder). Run again with the same --out to resume."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Separate with this model first (a path or a published model name, as in `mixit separate`); stems go to OUT/estimates/<track>/<stem>.wav (float WAV)."),
    estimates: Optional[Path] = typer.Option(None, "--estimates", help="Score existing stems instead: a folder of <track>/<stem>.wav (any audio format)."),
    subset: Subset = typer.Option(Subset.test, "--subset", help="MUSDB18-HQ subset: test (the paper's 50 tracks), valid (the standard 14) or train."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Processes scoring tracks in parallel (0: score in this process)."),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs (with --model)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast for separation (with --model)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Chunks per forward pass (with --model; default: 4 on a GPU, 1 on the CPU)."),
) -> None:
    """Score separations on MUSDB18-HQ: cSDR (museval BSSEval v4, median) and uSDR (paper and MDX21 variants, mean), as the paper's Table 1.

    Give --model to separate the tracks first (12 s chunks, 6 s hop), or --estimates to score stems that exist. Results are written per track as they are computed, so an interrupted run resumes. Silent stems are scored as the README's "Evaluation: silent stems" defines and are flagged.
    """
    from mixitcli.evaluate import evaluate_musdb

    try:
        evaluate_musdb(
            musdb, out, model=model, estimates=estimates, subset=subset.value, workers=workers,
            device=device.value, bf16=bf16, batch_size=batch_size, console=console,
        )
    except _user_errors() as e:
        fail(str(e))
    folder = out or estimates
    console.print(f"results in {folder}/summary.md, {folder}/summary.json, per track {folder}/results.csv", highlight=False)


@app.command("report")
def report_command(
    results: List[str] = typer.Argument(..., help="Results of `mixit eval`: summary.json files or their folders, each optionally named LABEL=PATH. Labels or model names like bslocoformer-medium, fma-large, freeze (or the paper's S1/S2/M1/M2/L1/L2) place them in Tables 1-3."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.md and one bar chart PNG per stem (and the average)."),
) -> None:
    """Assemble several evaluations into the layout of the paper's Tables 1-3 (Markdown) and a bar chart per stem (PNG)."""
    from mixitcli.report import write_report

    try:
        written = write_report(results, out)
    except _user_errors() as e:
        fail(str(e))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


def _user_errors() -> tuple[type[Exception], ...]:
    """Typed errors of the library that mean "fix your command", mapped to exit code 1."""
    from mixitcli.audio import AudioError
    from mixitcli.evaluate import EvalError
    from mixitcli.model import ModelLoadError
    from mixitcli.registry import RegistryError
    from mixitcli.report import ReportError
    from mixitcli.separate import SeparationError

    errors: tuple[type[Exception], ...] = (AudioError, EvalError, ModelLoadError, RegistryError, ReportError, SeparationError)
    try:
        from mixitcli.data.errors import DataError  # the MUSDB reader's layout errors (data branch)

        errors += (DataError,)
    except ImportError:
        pass
    return errors


def main() -> None:
    app()


if __name__ == "__main__":
    main()
