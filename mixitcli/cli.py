"""The `mixit` command line: one short function per subcommand (parse, validate, call, print).

Library code lives elsewhere; this module only maps options to library calls and typed
errors to clear messages and exit codes. Heavy imports happen inside the commands, so
`mixit --help` is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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
    "pretrain": "Pre-train BS-Locoformer with MixIT (12 outputs) on prepared FMA data.",
    "select-channels": "Pick 4 of the 12 MixIT outputs for vocals, drums, bass and other.",
    "finetune": "Supervised fine-tuning on MUSDB18-HQ (from scratch or from pre-training).",
    "freeze-finetune": "Fine-tuning with the separator frozen (encoder and decoder train).",
    "separate": "Separate songs into vocals, drums, bass and other.",
    "eval": "Score separations on MUSDB18-HQ (cSDR with museval, uSDR).",
}


PREPARE_FMA_HELP = """Cut FMA (or any folder of music) into 10 s clips for MixIT pre-training.

Per file (SPEC.md 2.1): files below 44.1 kHz are dropped, higher rates are resampled to 44.1 kHz, mono files are dropped (unless --keep-mono); 10 s clips every 5 s, plus one ending at the track's end; silent clips are dropped. Broken files (corrupt, truncated, empty, not audio) are listed in rejected.jsonl and never stop the run.

Writes DIR/manifest.jsonl (one line per clip), DIR/rejected.jsonl, DIR/summary.json, DIR/index.npz (for the samplers) and the audio store under DIR/shards/I-of-N/audio/ (the kept audio once, 16-bit). Re-running the same command resumes a stopped or killed run: finished files are not decoded again.

Several machines: run --shard 0/N ... --shard N-1/N with the same --out. On one shared disk the last shard to finish writes the manifest; otherwise copy every DIR/shards/* folder into one DIR and run `mixit prepare-fma --merge --out DIR`.
"""


@app.command("prepare-fma", help=PREPARE_FMA_HELP)
def prepare_fma(
    root: Optional[Path] = typer.Argument(None, help="Folder holding fma_<subset>/ (and fma_metadata/), or fma_<subset>/ itself."),
    out: Path = typer.Option(..., "--out", help="Output folder DIR (created; re-use it to resume)."),
    subset: Optional[str] = typer.Option(None, help="FMA subset: small, medium, large or full (needed with ROOT)."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Instead of ROOT: any folder tree of audio files (mp3, flac, ogg, wav, ...)."),
    metadata: Optional[Path] = typer.Option(None, help="Folder holding tracks.csv (default: fma_metadata/ beside the audio). Without one, every audio file is used."),
    workers: int = typer.Option(os.cpu_count() or 1, help="Worker processes (0: run in this process)."),
    shard: str = typer.Option("0/1", help="I/N: process only shard I (0-based) of N; see above."),
    valid_fraction: float = typer.Option(0.01, help="Share of tracks (not clips) held out for validation, chosen by a hash of the track id."),
    silence_rule: str = typer.Option("clip", help="clip: drop clips with more than 5 of ten 1 s intervals silent (paper). track: the official script's rule (0.5 s chunks; one bad clip drops the whole track)."),
    silence_db: Optional[float] = typer.Option(None, help="Count an interval as silent below this mean power in dB re full scale (default: only exact zeros)."),
    keep_mono: bool = typer.Option(False, "--keep-mono", help="Duplicate mono files to stereo instead of rejecting them (the official recipe keeps stereo only)."),
    merge: bool = typer.Option(False, "--merge", help="Only merge the finished shards in --out into the manifest (no ROOT needed)."),
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
            config = fma.PrepareConfig(out=out, rules=rules, workers=workers, shard=fma.parse_shard(shard), valid_fraction=valid_fraction, progress=progress)
            summary = fma.prepare_fma(source, config)
    except (DataError, ValueError) as e:
        fail(str(e))
    if summary is None:
        console.print(f"shard {shard} done; the other shards are not finished yet (then: mixit prepare-fma --merge --out {out})")
    else:
        console.print(fma.describe(summary), highlight=False)


@app.command("prepare-musdb")
def prepare_musdb(
    root: Path = typer.Argument(..., help="The MUSDB18-HQ folder holding train/ and test/ (WAV stems; .stem.mp4 is refused)."),
    out: Path = typer.Option(..., "--out", help="Output folder DIR."),
    workers: int = typer.Option(min(os.cpu_count() or 1, 8), help="Worker processes for the activity detection (0: in this process)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    """Check MUSDB18-HQ, find each training stem's salient 8 s segments, list the splits.

    Checks every file first and reports all problems at once. The standard 14 validation tracks are taken out of train (86 left). Source activity detection (SPEC.md 2.2) runs on vocals, drums, bass and other of the 86 training tracks.

    Writes DIR/salient/<stem>.jsonl (salient segments per stem), DIR/train.txt, DIR/valid.txt, DIR/test.txt (track names) and DIR/summary.json.
    """
    from mixitcli.data import DataError
    from mixitcli.data.musdb import prepare_musdb as run

    try:
        summary = run(root, out, workers=workers, progress=progress)
    except DataError as e:
        fail(str(e))
    tracks = ", ".join(f"{n} {s}" for s, n in summary["tracks"].items())
    segments = ", ".join(f"{s} {n}" for s, n in summary["segments"].items())
    console.print(f"tracks: {tracks}\nsalient 8 s segments: {segments}", highlight=False)


def _register_pending(name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        _not_implemented(name)

    command.__doc__ = f"{summary} (not implemented yet)"
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


for _name, _summary in _PENDING.items():
    _register_pending(_name, _summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
