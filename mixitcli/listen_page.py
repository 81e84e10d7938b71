"""The HTML of `mixit listen`: one self-contained index.html (inline CSS and script, every
table and number written into the page, so it works from file:// and any static host).

Layout: the summary table of the evaluations (as `mixit report`'s "All results"), the
per-track score table (sortable by any column in the browser; each row links to its
track), then one section per track: the mixture, then a row per stem with a column for the
reference and for each input, each cell a player, a spectrogram and the loudness.
"""

from __future__ import annotations

import math
import re
from html import escape
from urllib.parse import quote

from mixitcli.report import TABLE_STEMS as STEMS  # the paper's table order: vocals, bass, drums, other

CODECS = {  # codec -> (file suffix, MIME type, ffmpeg arguments)
    "opus": (".webm", "audio/webm; codecs=opus", ["-c:a", "libopus", "-b:a", "96k", "-ar", "48000"]),
    "mp3": (".mp3", "audio/mpeg", ["-c:a", "libmp3lame", "-b:a", "160k"]),
}

MIXTURE = "mixture"
REFERENCE = "reference"
DB_RANGE = 80.0
"""Spectrogram colour range in dB below the loudest bin of the track (same scale for all its pictures)."""


def stem_order(names) -> list[str]:
    """The four MUSDB stems in Table order, then other names in natural order (out2 before out10):
    the rows of a track, and the columns of the score tables when evaluations differ in stems."""
    known = [s for s in STEMS if s in names]
    rest = sorted(
        (n for n in names if n not in STEMS),
        key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)],
    )
    return known + rest


SHORT = {"csdr": "cSDR", "usdr": "uSDR", "usdr_mdx": "uSDR-MDX21"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:1em 2em;max-width:1800px;color:#1d1d1f;background:#fafafa}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .4em}
.note{color:#555;max-width:70em}
table{border-collapse:collapse;margin:.5em 0}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#eef1f5;position:sticky;top:0}
table.sortable thead tr:last-child th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{overflow-x:auto}
#scores-table td:first-child,#scores-table tr:last-child th:first-child{position:sticky;left:0;background:#fafafa;z-index:1}
section.track{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.2em 1em 1em;margin:1.2em 0}
table.grid td,table.grid th{vertical-align:top;text-align:left;border:none;white-space:normal}
table.grid thead th{background:none;position:static}
figure{margin:0 0 .4em;width:460px}
.spec{position:relative;width:460px;height:150px}
.spec img{display:block;width:460px;height:150px;image-rendering:pixelated}
.spec i{position:absolute;left:0;right:0;border-top:1px dashed rgba(255,255,255,.3)}
.spec span{position:absolute;left:3px;font-size:10px;color:#fff;text-shadow:0 0 2px #000;transform:translateY(50%)}
figure audio{width:460px;height:32px}
figcaption{font-size:12px;color:#444}
.chosen{color:#0a6b2d;font-weight:600}
.missing{color:#999}
nav a{margin-right:1em}
.tiles{display:flex;flex-wrap:wrap;gap:.4em 1.2em}
.tile h3{font-size:1em;margin:.3em 0}
"""

SCRIPT = """
function cellValue(row, col, numeric) {
  const cell = row.cells[col];
  const v = cell.dataset.v;
  if (!numeric) return cell.textContent.trim().toLowerCase();
  return v === undefined || v === "" ? NaN : parseFloat(v);
}
function sortTable(table, th) {
  const col = parseInt(th.dataset.col, 10);
  const numeric = th.dataset.type === "number";
  const descending = th.getAttribute("aria-sort") !== (numeric ? "descending" : "ascending")
    ? numeric : !numeric;
  table.querySelectorAll("thead th[aria-sort]").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, col, numeric), y = cellValue(b, col, numeric);
    if (numeric) {
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);  /* missing values last */
      return descending ? y - x : x - y;
    }
    return descending ? y.localeCompare(x) : x.localeCompare(y);
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("thead th[data-col]").forEach(th => {
    th.tabIndex = 0;
    th.title = "sort by this column";
    th.addEventListener("click", () => sortTable(table, th));
    th.addEventListener("keydown", e => { if (e.key === "Enter") sortTable(table, th); });
  });
});
"""


def _num(x) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def _td(x) -> str:
    ok = x is not None and math.isfinite(x)
    return f'<td data-v="{x:.6g}">{_num(x)}</td>' if ok else '<td data-v="">–</td>'


def columns(evals) -> list[str]:
    """The score tables' columns: every evaluated stem (:func:`stem_order`), then the average."""
    return stem_order({s for e in evals for s in e.stems}) + ["average"]


def _track_average(record: dict, metric: str) -> float | None:
    values = list(record[metric].values())
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _lufs(value: float | None, x_is_silent: bool) -> str:
    if x_is_silent:
        return "silent"
    if value is None:
        return "too short for loudness"
    if value == -math.inf:
        return "below −70 LUFS"
    return f"{value:.1f} LUFS"


def summary_table(evals) -> str:
    """Rows: evaluations; columns: cSDR and uSDR per stem and average (as `mixit report`)."""
    metrics, cols = ("csdr", "usdr"), columns(evals)
    heads = ['<th data-col="0" data-type="text">model</th><th data-col="1" data-type="number">tracks</th>']
    col = 2
    for m in metrics:
        for c in cols:
            heads.append(f'<th data-col="{col}" data-type="number">{SHORT[m]} {c.capitalize()}</th>')
            col += 1
    rows = []
    for s in evals:
        cells = [
            f"<td>{escape(s.label)}</td>",
            f'<td data-v="{s.summary.get("tracks", 0)}">{s.summary.get("tracks", "–")}</td>',
        ]
        cells += [_td(s.summary[m].get(c)) for m in metrics for c in cols]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<table class="sortable" id="summary-table"><thead><tr>'
        + "".join(heads)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def scores_table(evals, pages) -> str:
    """Rows: tracks (linked to their section); per evaluation cSDR and uSDR of each stem and their mean."""
    metrics, cols = ("csdr", "usdr"), columns(evals)
    group = ['<th rowspan="1"></th>'] + [
        f'<th colspan="{len(metrics) * len(cols)}" style="text-align:center">{escape(s.label)}</th>' for s in evals
    ]
    heads, col = ['<th data-col="0" data-type="text">track</th>'], 1
    for _ in evals:
        for m in metrics:
            for c in cols:
                heads.append(
                    f'<th data-col="{col}" data-type="number">{SHORT[m]} {c[:1].upper() + c[1:3] if c != "average" else "Avg"}</th>'
                )
                col += 1
    rows = []
    for page in pages:
        cells = [f'<td><a href="#{page.anchor}">{escape(page.name)}</a></td>']
        for s in evals:
            record = s.records.get(page.name)
            for m in metrics:
                for c in cols:
                    value = (
                        None if record is None else (_track_average(record, m) if c == "average" else record[m].get(c))
                    )
                    cells.append(_td(value))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="scroll"><table class="sortable" id="scores-table"><thead><tr>'
        + "".join(group)
        + "</tr><tr>"
        + "".join(heads)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _clip(clip, *, mime: str, caption: str, alt: str, ticks) -> str:
    marks = "".join(
        f'<i style="bottom:{h:.1f}%"></i><span style="bottom:{h:.1f}%">{label}</span>' for label, h in ticks
    )
    return (
        f'<figure><div class="spec"><img src="{quote(clip.image)}" alt="{escape(alt)}" width="460" height="150">{marks}</div>'
        f'<audio controls preload="metadata"><source src="{quote(clip.audio)}" type="{escape(mime)}"></audio>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _selection_note(stem: str, selection: dict | None) -> str:
    if not selection or not stem.startswith("out") or not stem[3:].isdigit():
        return ""
    i = int(stem[3:])
    parts = []
    if i in selection["selected"]:
        parts.append(f'<span class="chosen">selected for {escape(selection["selected"][i])}</span>')
    if i in selection["counts"]:
        votes = ", ".join(f"{escape(k)} {v}" for k, v in selection["counts"][i].items())
        parts.append(f"best match in chunks: {votes}")
    return " · ".join(parts)


def _cell(page, clip, column: str, stem: str, by_label: dict, *, mime: str, selection: dict | None) -> str:
    """A player with its picture and notes: loudness, this track's scores, channel selection."""

    notes = [_lufs(clip.lufs, clip.silent)]
    record = by_label[column].records.get(page.name) if column in by_label else None
    if record is not None:
        notes += [f"{SHORT[m]} {_num(record[m].get(stem))} dB" for m in ("csdr", "usdr")]
        if record.get("flags", {}).get(stem):
            notes.append(escape(record["flags"][stem]))
    chosen = _selection_note(stem, selection) if column != REFERENCE else ""
    caption = " · ".join(notes) + (f"<br>{chosen}" if chosen else "")
    return _clip(clip, mime=mime, caption=caption, alt=f"{page.name}: {column} {stem} spectrogram", ticks=page.ticks)


def track_section(page, sources, *, mime: str, selection: dict | None) -> str:
    """One track: the mixture, then a row per stem with the reference and every input; a
    single input without references (e.g. 12 MixIT outputs) is laid out as wrapping tiles."""

    columns = [c for c in page.clips if c != MIXTURE]
    stems = stem_order({s for c in columns for s in page.clips[c]})
    by_label = {s.label: s for s in sources}
    excerpt = (
        f"{page.start_s:.1f}–{page.stop_s:.1f} s of {page.seconds:.1f} s"
        if page.stop_s - page.start_s < page.seconds - 1e-3
        else f"whole track, {page.seconds:.1f} s"
    )
    mix = page.clips[MIXTURE][MIXTURE]
    mix_note = f" ({escape(page.mixture_note)})" if page.mixture_note else ""
    mixture = _clip(
        mix,
        mime=mime,
        caption=_lufs(mix.lufs, mix.silent) + mix_note,
        alt=f"{page.name}: mixture spectrogram",
        ticks=page.ticks,
    )
    out = [
        f'<section class="track" id="{page.anchor}"><h2>{escape(page.name)}</h2>',
        f'<p class="note">{excerpt} · <a href="#top">top</a></p>',
    ]
    if len(columns) == 1:
        (column,) = columns
        tiles = [f'<div class="tile"><h3 class="stem">mixture</h3>{mixture}</div>']
        tiles += [
            f'<div class="tile"><h3 class="stem">{escape(s)}</h3>{_cell(page, page.clips[column][s], column, s, by_label, mime=mime, selection=selection)}</div>'
            for s in stems
        ]
        out.append(f'<p class="note">{escape(column)}</p><div class="tiles">' + "".join(tiles) + "</div></section>")
        return "\n".join(out)
    out.append(
        '<table class="grid"><thead><tr><th></th>'
        + "".join(f"<th>{escape(c)}</th>" for c in columns)
        + "</tr></thead><tbody>"
    )
    out.append(f'<tr><th class="stem">mixture</th><td colspan="{len(columns)}">{mixture}</td></tr>')
    for stem in stems:
        cells = [
            f"<td>{_cell(page, page.clips[c][stem], c, stem, by_label, mime=mime, selection=selection)}</td>"
            if stem in page.clips[c]
            else '<td class="missing">–</td>'
            for c in columns
        ]
        out.append(f'<tr><th class="stem">{escape(stem)}</th>' + "".join(cells) + "</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def render(
    sources, pages, *, title: str, seconds: float | None, codec: str, selection: dict | None, generator: str
) -> str:
    """The whole index.html."""

    suffix, mime, args = CODECS[codec]
    evals = [s for s in sources if s.kind == "eval"]
    with_summary = [s for s in evals if s.summary]
    bitrate = args[args.index("-b:a") + 1]
    how = (
        f"{len(pages)} track(s). "
        + (f"Excerpts of {seconds:g} s where the mixture is loudest" if seconds else "Whole tracks")
        + f"; audio: {'Opus' if codec == 'opus' else 'MP3'} at {bitrate[:-1]} kb/s. Loudness: integrated LUFS (ITU-R BS.1770) of the audio played here. "
        f"Spectrograms: log frequency, colours from the loudest point of each track down to −{DB_RANGE:.0f} dB (the same scale for every picture of a track)."
    )
    inputs = "; ".join(
        f"<b>{escape(s.label)}</b>: {escape(str(s.path))} ({'mixit eval' if s.kind == 'eval' else 'mixit separate'})"
        for s in sources
    )
    body = [f'<h1 id="top">{escape(title)}</h1>', f'<p class="note">{inputs}</p>', f'<p class="note">{how}</p>']
    if selection:
        chunks = f" over {selection['chunks']} chunks" if selection.get("chunks") else ""
        chosen = ", ".join(f"{escape(stem)} = out{i}" for i, stem in sorted(selection["selected"].items()))
        body.append(f'<p class="note">Channel selection{chunks}: {chosen}.</p>')
    if with_summary:
        body += [
            "<h2>Summary</h2>",
            '<p class="note">cSDR: median over tracks; uSDR: mean over tracks (as `mixit report`).</p>',
            summary_table(with_summary),
        ]
    if evals:
        body += [
            "<h2>Per track</h2>",
            '<p class="note">Click a column heading to sort; click a track to listen.</p>',
            scores_table(evals, pages),
        ]
    else:
        body.append("<nav>" + "".join(f'<a href="#{p.anchor}">{escape(p.name)}</a>' for p in pages) + "</nav>")
    body += [track_section(p, sources, mime=mime, selection=selection) for p in pages]
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{generator}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
