"""`mixit eval`: scores on MUSDB18-HQ, or on the test songs of any prepared stems folder, per
track and per stem name, resumable and in parallel processes (docs/method.md §7).

The metrics themselves are :mod:`mixitcli.metrics`; the summary over tracks and its tables are
:mod:`mixitcli.report`. This module holds the runner (separate with a model or read existing
estimates, score tracks in worker processes, show progress) and the results folder it fills.
Records and the CSV list MUSDB18-HQ's stems in the paper's table order
(:data:`mixitcli.report.TABLE_STEMS`) and other stem sets in their own order.

Non-finite samples (NaN, infinity) in a reference, an estimate or a mixture to separate are
replaced by 0 as they are read (:func:`mixitcli.audio.read_blocks`); each file that had any is
named with its count in the record's ``nonfinite``, in the summary and in a warning.

An estimate of another length than its reference is scored on the reference's length (cut,
or padded with zeros at the end), never silently: the record's ``length_mismatch`` gives both
lengths per stem, the summary lists them and a warning names the track (issue 20).

One writer per results folder (issue 20): the command holds OUT's lock
(:func:`mixitcli.lock.folder_lock`) from start to end, so a second `mixit eval` into it is
refused, naming the first. A stop signal (SIGINT, SIGTERM, SIGUSR1) stops at once: the stems
being separated are deleted, the scoring processes (which ignore stop signals, so that only
this process decides) are ended, and every scored track stays in results.jsonl for the rerun.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from mixitcli.audio import require_ffmpeg
from mixitcli.lock import folder_lock
from mixitcli.metrics import METRICS, MUSEVAL_NEEDS, score_arrays
from mixitcli.report import (
    SUMMARY_JSON,
    SUMMARY_MD,
    TABLE_STEMS,
    fmt,
    markdown_table,
    print_table,
    summarise,
    table_order,
)
from mixitcli.signals import STOP_SIGNALS, Interrupted, raise_on_stop
from mixitcli.stems import STEMS, describe
from mixitcli.storage import atomic_write_text, naming, remove_stale_temporaries

RECORDS, RECORDS_CSV, CONFIG = "results.jsonl", "results.csv", "eval_config.json"
ESTIMATES = "estimates"


class EvalError(Exception):
    """Evaluation cannot start or go on; the message says what is missing or inconsistent."""


# -- one track's files ---------------------------------------------------------------------


def score_track(name: str, references: Mapping[str, Path | None], estimates: Mapping[str, Path]) -> dict:
    """Read one track's reference and estimate files and score them (runs in a worker process).

    Args:
        references: stem -> reference file, in the record's stem order; None for a stem the
            song lacks (silence, so its scores are left out as for any silent reference).
        estimates: stem -> estimate file.

    Raises:
        EvalError: unreadable files, or sample rates or channel counts that differ.
    """
    started = time.perf_counter()
    stems = tuple(references)
    refs, ests, rate = {}, {}, None
    nonfinite: dict[str, int] = {}
    lengths: dict[str, dict[str, int]] = {}
    for stem in stems:
        for found, path in ((refs, references[stem]), (ests, estimates[stem])):
            if path is None:
                continue
            data, sr = _read_finite(Path(path), nonfinite)  # (c, t)
            if rate is not None and sr != rate:
                raise EvalError(f"{path}: {sr} Hz, but the references are {rate} Hz")
            rate = sr
            found[stem] = data
    first = next(iter(refs.values()), next(iter(ests.values())))
    c, t = first.shape[0], first.shape[1]
    for stem in stems:
        ref = refs.setdefault(stem, np.zeros((c, t)))  # a stem the song lacks: silence
        if ests[stem].shape[0] != ref.shape[0]:
            raise EvalError(f"{estimates[stem]}: {ests[stem].shape[0]} channel(s), the reference has {ref.shape[0]}")
        if ests[stem].shape[1] != t:
            lengths[stem] = {"estimate_samples": ests[stem].shape[1], "reference_samples": t}
        est = ests[stem][:, :t]
        ests[stem] = np.pad(est, ((0, 0), (0, t - est.shape[1])))  # the reference's length: cut or zero-padded
    record = {"track": name, "seconds": round(t / rate, 2)}
    record.update(score_arrays(np.stack([refs[s] for s in stems]), np.stack([ests[s] for s in stems]), stems=stems))
    if nonfinite:
        record["nonfinite"] = nonfinite
    if lengths:
        record["length_mismatch"] = lengths
    record["eval_s"] = round(time.perf_counter() - started, 1)
    return record


def _read_finite(path: Path, nonfinite: dict[str, int]) -> tuple[np.ndarray, int]:
    """A whole file as float64 (c, t) and its rate; non-finite samples are replaced by 0 and
    their count stored in ``nonfinite[str(path)]``. Raises EvalError when it cannot be read."""
    from mixitcli import audio

    count = audio.NonFiniteCount()
    try:
        meta = audio.info(path)
        blocks = list(audio.read_blocks(path, 1 << 20, on_nonfinite=count))
    except audio.AudioError as e:
        raise EvalError(f"{path}: cannot read ({str(e).removeprefix(f'{path}: ')})") from e
    if count.samples:
        nonfinite[str(path)] = count.samples
    if not blocks:
        return np.zeros((meta.channels, 0)), meta.sample_rate
    return np.concatenate(blocks, axis=1).astype(np.float64), meta.sample_rate


# -- results folder ------------------------------------------------------------------------


class ResultsFolder:
    """OUT/results.jsonl (the truth, one line per track, appended as computed), OUT/results.csv
    (the same as a table), OUT/summary.{json,md}, OUT/eval_config.json (what is evaluated)."""

    def __init__(self, out: Path, config: dict, stems: Sequence[str] = TABLE_STEMS):
        self.out = Path(out)
        self.stems = tuple(stems)
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        cfg_path = self.out / CONFIG
        old = self._read_config(cfg_path)
        if old is not None:
            if old != config:
                changed = ", ".join(
                    f"{k}: {old.get(k)!r} -> {config.get(k)!r}"
                    for k in sorted(set(old) | set(config))
                    if old.get(k) != config.get(k)
                )
                raise EvalError(
                    f"{self.out} holds results of another evaluation ({changed}); use another --out or delete it"
                )
        else:
            atomic_write_text(cfg_path, json.dumps(config, indent=2) + "\n")
        self.records = self._load()
        self._rewrite_csv()

    def _read_config(self, path: Path) -> dict | None:
        """The saved eval_config.json; None when there is none, or when it is damaged (an
        older version killed while writing it) before any result was written."""
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            results = self.out / RECORDS
            if results.is_file() and results.stat().st_size > 0:
                raise EvalError(
                    f"{path} is damaged ({e.__class__.__name__}) and {results} holds results: delete {path} if those "
                    "results come from this same evaluation, or use another --out"
                ) from e
            return None  # nothing was evaluated under it: write it again

    def _load(self) -> list[dict]:
        path = self.out / RECORDS
        records = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by an interruption: that track is redone
                    continue
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        return records

    def done(self) -> set[str]:
        return {r["track"] for r in self.records}

    def _row(self, r: dict) -> list:
        row = [r["track"], r.get("seconds")]
        for metric in METRICS:
            row += [r[metric].get(s) for s in self.stems]
        flags = [f"{s}: {f}" for s, f in r.get("flags", {}).items()]
        flags += [f"{s}: {length_note(n)}" for s, n in r.get("length_mismatch", {}).items()]
        return row + ["; ".join(flags)]

    def _rewrite_csv(self) -> None:
        with open(self.out / RECORDS_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["track", "seconds"] + [f"{m}_{s}" for m in METRICS for s in self.stems] + ["flags"])
            writer.writerows(self._row(r) for r in self.records)

    def add(self, record: dict) -> None:
        import os

        with naming(self.out / RECORDS), open(self.out / RECORDS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with naming(self.out / RECORDS_CSV), open(self.out / RECORDS_CSV, "a", newline="") as f:
            csv.writer(f).writerow(self._row(record))
        self.records.append(record)

    def finish(self, **meta) -> dict:
        summary = summarise(sorted(self.records, key=lambda r: r["track"]), stems=self.stems, **meta)
        atomic_write_text(self.out / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
        atomic_write_text(self.out / SUMMARY_MD, markdown_table(summary))
        return summary


def length_note(lengths: dict) -> str:
    """What the score did with an estimate of another length: ``lengths`` is a record's
    ``length_mismatch`` entry of one stem."""
    est, ref = lengths["estimate_samples"], lengths["reference_samples"]
    if est > ref:
        return f"estimate {est} samples, reference {ref}: its last {est - ref} cut"
    return f"estimate {est} samples, reference {ref}: padded with {ref - est} zeros"


# -- MUSDB tracks ----------------------------------------------------------------------------


def musdb_tracks(root: str | Path, subset: str) -> list:
    """Tracks of a MUSDB18-HQ subset (the data stage's reader; layout errors are DataError)."""
    from mixitcli.data.musdb import scan_musdb

    return scan_musdb(root, subset)


def data_tracks(data: str | Path, subset: str) -> tuple[list, tuple[str, ...]]:
    """The songs of ``subset`` of a prepared stems folder, and its stems (DataError when unusable)."""
    from mixitcli.data.prepared import load_prepared_tracks, prepared_stems

    return load_prepared_tracks(data, subset), prepared_stems(data)


def find_estimates(folder: Path, tracks: Sequence, stems: Sequence[str] = STEMS) -> dict[str, dict[str, Path]]:
    """``folder/<track>/<stem>.<wav|flac|...>`` for every track and stem.

    Raises:
        EvalError: listing every missing estimate.
    """
    from mixitcli.audio import AUDIO_EXTENSIONS

    found, missing = {}, []
    for track in tracks:
        found[track.name] = {}
        for stem in stems:
            hits = [
                folder / track.name / f"{stem}{ext}"
                for ext in AUDIO_EXTENSIONS
                if (folder / track.name / f"{stem}{ext}").is_file()
            ]
            if hits:
                found[track.name][stem] = hits[0]
            else:
                missing.append(f"{track.name}/{stem}")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise EvalError(f"{folder}: {len(missing)} estimate(s) missing ({shown}); expected {folder}/<track>/<stem>.wav")
    return found


# -- the command ---------------------------------------------------------------------------


def evaluate_musdb(
    musdb: str | Path | None,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    model: str | None = None,
    estimates: str | Path | None = None,
    subset: str = "test",
    workers: int = 2,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int | None = None,
    console=None,
) -> dict:
    """`mixit eval`: separate MUSDB18-HQ, or a prepared stems folder's songs, with ``model`` (into
    OUT/estimates) or read ``estimates``, score every track per stem, write per-track results as
    they come and the summary.

    Tracks already in OUT/results.jsonl are skipped (resume); separated tracks whose stems
    all exist are not separated again.

    Args:
        musdb: the MUSDB18-HQ root (its four stems), or None with ``data``.
        data: a prepared stems folder (prepare-stems, prepare-musdb): its songs and its stems.
        out: results folder (None: the ``estimates`` folder; needed with ``model``).
        model: model path or published name (exclusive with ``estimates``).
        estimates: folder of ``<track>/<stem>.wav``.
        subset: "test" (the paper's), "valid" or "train".
        workers: scoring processes (0: score in this process).
        device, precision, batch_size: separation settings (paper chunking, 12 s / 6 s;
            precision as :mod:`mixitcli.inference`).
        console: rich Console for progress and the table (None: silent).

    Returns:
        The summary (also in OUT/summary.json and OUT/summary.md).

    Raises:
        EvalError: bad arguments, missing estimates, a results folder of another evaluation, a
            model whose stems are not the data's (both named).
        MissingFFmpegError: ffmpeg/ffprobe are not on PATH (museval cannot be imported).
        LockError: another command is writing into OUT.
        Interrupted: a stop signal arrived (what was scored is kept).
    """
    require_ffmpeg(MUSEVAL_NEEDS)
    if (model is None) == (estimates is None):
        raise EvalError("give exactly one of --model (separate, then score) and --estimates (score existing stems)")
    if (musdb is None) == (data is None):
        raise EvalError(
            "give exactly one of --musdb MUSDB18HQ (a MUSDB18-HQ tree) and --data DIR (a prepared stems folder)"
        )
    if out is None and estimates is None:
        raise EvalError("--out is needed with --model (the separated stems and the results go there)")
    out = Path(out if out is not None else estimates)
    if data is not None:
        tracks, stems = data_tracks(data, subset)
        config = {
            "data": str(Path(data).expanduser().resolve()),
            "stems": list(stems),
            "subset": subset,
            "model": model,
            "estimates": str(estimates) if estimates else None,
        }
    else:  # the keys of the evaluations made before stem sets, so that their folders resume
        tracks, stems = musdb_tracks(musdb, subset), STEMS
        config = {
            "musdb": str(Path(musdb).expanduser().resolve()),
            "subset": subset,
            "model": model,
            "estimates": str(estimates) if estimates else None,
        }
    with raise_on_stop():
        try:
            with folder_lock(out):
                return _evaluate(
                    out,
                    tracks,
                    stems,
                    config,
                    data=data,
                    model=model,
                    estimates=estimates,
                    subset=subset,
                    workers=workers,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                    console=console,
                )
        except Interrupted as e:
            raise Interrupted(
                e.signum,
                f"{e}. No partial file is left; the tracks scored so far are in {out / RECORDS}: "
                "run the same command again to score the rest.",
            ) from None


def _evaluate(
    out: Path, tracks, stems, config, *, data, model, estimates, subset, workers, device, precision, batch_size, console
) -> dict:
    """:func:`evaluate_musdb`'s work, holding OUT's lock."""
    if model is not None:  # OUT/estimates is written by this command only, under OUT's lock
        remove_stale_temporaries(out / ESTIMATES, recursive=True, locked=True)
    separate = (
        _separator(model, stems, device=device, precision=precision, batch_size=batch_size, console=console)
        if model
        else None
    )
    order = table_order(stems)
    results = ResultsFolder(out, config, order)
    todo = [t for t in tracks if t.name not in results.done()]
    refs = {t.name: {s: t.path(s) for s in order} for t in todo}
    if estimates is not None:
        est_paths = find_estimates(Path(estimates), todo, stems)
    else:
        est_paths = {t.name: {s: out / ESTIMATES / t.name / f"{s}.wav" for s in stems} for t in todo}
    progress = _Progress(console, len(tracks), len(tracks) - len(todo), separate is not None)
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=_spawn(), initializer=_ignore_stop_signals)
        if workers > 0
        else None
    )
    pending: dict[Future, str] = {}
    try:
        for track in todo:
            if separate is not None:
                if not all(p.is_file() for p in est_paths[track.name].values()):
                    separate(track, est_paths[track.name], progress)
                progress.separated()
            if pool is None:
                _record(results, score_track(track.name, refs[track.name], est_paths[track.name]), progress)
                continue
            pending[pool.submit(score_track, track.name, refs[track.name], est_paths[track.name])] = track.name
            finished, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
            for future in finished:
                pending.pop(future)
                _record(results, future.result(), progress)
        for future in list(pending):
            _record(results, future.result(), progress)
            pending.pop(future)
    except BaseException:
        if pool is not None:
            _end_workers(pool)  # a stop signal or an error: their scores would not be recorded
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        progress.stop()
    meta = {"data": config["data"]} if data is not None else {}
    summary = results.finish(model=model, estimates=str(estimates) if estimates else None, subset=subset, **meta)
    if console is not None:
        print_table(summary, console)
    return summary


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")  # workers use numpy/museval only; no fork of a threaded torch


def _ignore_stop_signals() -> None:
    """In a scoring process: leave stop signals to the main process (Ctrl-C reaches the whole
    process group; a worker that died of it would break the pool with a traceback)."""
    import signal

    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the scoring processes now (they write nothing) instead of waiting for their tracks."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


def _record(results: ResultsFolder, record: dict, progress) -> None:
    from mixitcli.audio import nonfinite_message

    results.add(record)
    progress.scored(record)
    for path, n in record.get("nonfinite", {}).items():
        progress.warn(nonfinite_message(path, n) + " before scoring")
    mismatch = record.get("length_mismatch", {})
    if mismatch:
        notes = "; ".join(f"{stem}: {length_note(n)}" for stem, n in mismatch.items())
        progress.warn(
            f"{record['track']}: estimates of another length than their references, scored on the reference's length ({notes})"
        )


def _separator(spec: str, stems: tuple[str, ...], *, device: str, precision: str, batch_size: int, console):
    """A function (track, outputs, progress) that writes a track's stems with the model.

    Raises:
        EvalError: the model's stems are not the data's (issue 21): both lists named.
    """
    from mixitcli.inference import prepare
    from mixitcli.model import load_model
    from mixitcli.registry import resolve_model
    from mixitcli.separate import ChunkOptions, pick_device, separate_file

    torch_device = pick_device(device)
    net = load_model(resolve_model(spec, progress=console is not None)).to(torch_device).eval()
    if set(net.stems) != set(stems):
        raise EvalError(
            f"{spec}: the model outputs the stems {describe(net.stems)}, but the data's stems are {describe(stems)}; "
            "evaluate a model fine-tuned on these stems (its run's --data), or data prepared with the model's stems "
            f"(`mixit prepare-stems ROOT --out DIR --stems {','.join(net.stems)}`)"
        )
    options = ChunkOptions(batch_size=batch_size)
    network = prepare(net, device=torch_device, precision=precision)  # once for all tracks

    def run(track, outputs: dict[str, Path], progress) -> None:
        progress.separating(track.name)
        result = separate_file(network, track.path("mixture"), outputs, options=options, bits="float")
        for note in result.warnings():
            progress.warn(note)

    return run


class _Progress:
    """The bars of `mixit eval` (:mod:`mixitcli.progress`): tracks separated (with a model) and
    scored, with the last track's scores; nothing without a console."""

    def __init__(self, console, total: int, done: int, separating: bool):
        from mixitcli.progress import Progress

        self.display = Progress(console, enabled=console is not None).start()
        self.sep = self.display.bar("separated", total, done=done, unit="tracks") if separating else None
        self.score = self.display.bar("scored", total, done=done, unit="tracks")

    def separating(self, name: str) -> None:
        self.sep.update(info=name[:40])

    def separated(self) -> None:
        self.sep.advance(info="")

    def scored(self, record: dict) -> None:
        csdr = " ".join(f"{s[:1].upper()}{fmt(v)}" for s, v in record["csdr"].items())
        self.score.advance(info=f"{record['track'][:30]}: cSDR {csdr}")

    def warn(self, text: str) -> None:
        self.display.print(f"[yellow]warning:[/] {text}")

    def stop(self) -> None:
        self.display.stop()
