"""Renderers of a summarised table (harness/report/leaderboard.py `Line`s): Markdown, CSV and LaTeX.

Every renderer starts from one pandas frame per table (`frame`), so the three formats show the same numbers: CSV is
`DataFrame.to_csv`, LaTeX is pandas' Styler (booktabs rules; needs jinja2), Markdown is a small pipe-table writer
(pandas' own needs the optional `tabulate`). Published tables are laid out as in the paper for LaTeX — methods ×
benchmarks, ours ± std beside the published number, a verdict mark — and as one line per comparison in Markdown/CSV.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from harness.core.markdown import markdown_table
from harness.report.tables import METRICS, NOTE_SEPARATOR, ResolvedTable
from harness.report.verdicts import (
    CONFLICT,
    DIFFERS,
    FAILED,
    NO_IMPLEMENTATION,
    NOT_RUN,
    PARTIAL,
    PROTOCOL_DIFFERS,
    REPRODUCED,
    VERDICT_RULE,
    VERDICTS,
    _finite,
    delta_text,
)

if TYPE_CHECKING:
    import pandas as pd

    from harness.report.tables import Line

RECONSTRUCTED = "†"  # marks a clmerge method with reconstructed parts (footnote says which)


# --------------------------------------------------------------------------------------------------------------------
# Cell texts


def ours_text(line: Line, pm: str = " ± ") -> str:
    if not line.entry.implemented or line.n == 0:
        return "–"
    n = f"{line.n}" if line.n == line.total else f"{line.n}/{line.total}"
    return f"{line.mean:.2f}" + (f"{pm}{line.std:.2f}" if _finite(line.std) else "") + f" ({n})"


def pub_text(line: Line, pm: str = " ± ") -> str:
    p = line.entry.published
    if p is None:
        return "–"
    return p.value_text + (f"{pm}{p.std_text}" if p.std_text else "")


def method_text(line: Line) -> str:
    """The clmerge method, marked † when it has reconstructed parts."""
    e = line.entry
    return "–" if e.method is None else e.method + (RECONSTRUCTED if e.reconstruction else "")


def mean_text(ln: Line | None, pm: str = " ± ") -> str:
    if ln is None or ln.n == 0:
        return "–"
    return f"{ln.mean:.2f}" + (f"{pm}{ln.std:.2f}" if _finite(ln.std) else "")


def grid_status(ln: Line) -> str:
    """done · not run · partial (k/n) · failed (k/n), for a grid table's row."""
    if ln.failed:
        return f"failed ({len(ln.failed)}/{ln.total})"
    if ln.n == 0:
        return NOT_RUN
    return "done" if ln.n == ln.total else f"partial ({ln.n}/{ln.total})"


def _grouped(lines: list[Line]) -> list[Line]:
    """Lines grouped by benchmark (in order of first appearance), keeping the table's order within a benchmark."""
    order: dict[str, int] = {}
    for ln in lines:
        order.setdefault(ln.entry.benchmark, len(order))
    return sorted(lines, key=lambda ln: order[ln.entry.benchmark])  # stable


# The research notes' verification tags ("[V N-en]", "[V SDL imgs/results1.jpg]", "[? P&M]"): bookkeeping for us,
# noise in a paper's footnote; published.csv keeps them.
_INTERNAL_TAG = re.compile(r"\s*\[(?:V|\?)(?:\s[^\]]*)?\]")


def public_note(text: str) -> str:
    """A note as a reader sees it: internal verification tags removed."""
    return re.sub(r"\s+([:;,.])", r"\1", _INTERNAL_TAG.sub("", text)).strip()


def _notes(lines: list[Line]) -> tuple[dict[int, list[int]], list[str]]:
    """Footnote numbers per line (by id) and the distinct note texts (published notes split at NOTE_SEPARATOR,
    internal tags removed)."""
    texts: list[str] = []
    refs: dict[int, list[int]] = {}
    for ln in lines:
        parts = []
        if ln.entry.published and ln.entry.published.note:
            parts += [public_note(p) for p in ln.entry.published.note.split(NOTE_SEPARATOR) if public_note(p)]
        if ln.entry.note:
            parts += [public_note(p) for p in ln.entry.note.split(NOTE_SEPARATOR) if public_note(p)]
        if ln.entry.conflict:
            parts.append(f"published conflict: {ln.entry.conflict}")
        if ln.entry.missing:
            parts.append(ln.entry.missing)
        nums = []
        for p in parts:
            if p not in texts:
                texts.append(p)
            nums.append(texts.index(p) + 1)
        refs[id(ln)] = sorted(set(nums))
    return refs, texts


def _reconstructions(lines: list[Line], tex: bool = False) -> list[str]:
    """One footnote per reconstructed clmerge method in the table (Markdown, or LaTeX with `tex`)."""
    seen: dict[str, str] = {}
    for ln in lines:
        if ln.entry.reconstruction and ln.entry.method not in seen:
            seen[ln.entry.method] = ln.entry.reconstruction  # type: ignore[index]
    if tex:
        return [rf"$^\dagger$ \texttt{{{tex_escape(m)}}} is (partly) a reconstruction: {tex_escape(t)}" for m, t in seen.items()]
    return [f"{RECONSTRUCTED} `{m}` is (partly) a reconstruction: {text}" for m, text in seen.items()]


def env_lines(env: dict[str, Any]) -> list[str]:
    if not env["runs"]:
        return ["no finished runs"]
    pk = ", ".join(f"{k} {'/'.join(v)}" + (" (MIXED)" if len(v) > 1 else "") for k, v in env["packages"].items())
    splits = "; ".join(f"{k}: {', '.join(v)}" + (" (MIXED)" if len(v) > 1 else "") for k, v in env["split_hashes"].items())
    return [
        f"finished runs: {env['runs']}",
        f"packages: {pk}",
        f"device (GPU): {', '.join(env['devices'])}",
        f"python: {', '.join(env['python'])}; git commit: {', '.join(env['git_commits'])}",
        f"seeds: {', '.join(map(str, env['seeds']))}",
        f"split hashes: {splits}",
    ]


def _protocol_lines(resolved: ResolvedTable) -> list[str]:
    spec = resolved.spec
    out = []
    for name in resolved.used_presets:
        p = resolved.presets[name]
        out.append(f"preset `{name}`: {p.description}" + (f" Not expressible in clmerge: {p.not_expressible}" if p.not_expressible else ""))
    if spec.overrides:
        out.append(f"overrides: {spec.overrides}")
    for b, ov in spec.benchmark_overrides.items():
        out.append(f"{b}: {ov}")
    for m, ov in spec.method_overrides.items():
        out.append(f"{m}: {ov}")
    for b, why in spec.split_differs.items():
        out.append(f"{b}: split differs from the published one — {why}")
    return out


def _counts(lines: list[Line]) -> str:
    c: dict[str, int] = {}
    for ln in lines:
        c[ln.verdict] = c.get(ln.verdict, 0) + 1
    known = [v for v in VERDICTS if v in c] + [v for v in c if v not in VERDICTS]
    return " · ".join(f"{v} {c[v]}" for v in known)


def _status_lines(lines: list[Line], status_cmd: str) -> list[str]:
    """Failed cells (first line of each error) and result files not counted (run id or config mismatch)."""
    out, seen = [], set()
    for ln in lines:
        for cfg, message in ln.failed:
            if cfg.run_id() not in seen:
                seen.add(cfg.run_id())
                out.append(f"failed: {cfg.benchmark} × {cfg.method} × seed {cfg.seed} (run {cfg.run_id()}): {message}")
        for why in ln.mismatched:
            if why not in seen:
                seen.add(why)
                out.append(f"not counted (result does not match its cell): {why}")
    if any(ln.failed for ln in lines):
        out.append(f"details and log tails: `{status_cmd}`")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Frames: one row per comparison (published tables) or per benchmark × method (grid tables)


def frame(resolved: ResolvedTable, lines: list[Line]) -> pd.DataFrame:
    """Published tables: one row per line with display texts and the raw numbers (CSV columns)."""
    import pandas as pd

    refs, _ = _notes(lines)
    rows = []
    for ln in _grouped(lines):
        e, p = ln.entry, ln.entry.published
        rows.append({
            "benchmark": e.benchmark, "method": e.label, "clmerge": method_text(ln), "metric": METRICS[e.metric],
            "ours (n)": ours_text(ln), "published": pub_text(ln),
            "Δ": delta_text(ln.delta, ln.bound) if p else "–",
            "bound": f"{ln.bound:.2f}" if p and _finite(ln.delta) else "–",
            "verdict": ln.status, "notes": ", ".join(str(k) for k in refs[id(ln)]),
            # raw values, for the CSV
            "table": resolved.spec.name, "method_as_published": e.label, "method_name": e.method or "",
            "metric_key": e.metric, "ours_mean": ln.mean if ln.n else None, "ours_std": ln.std if ln.n > 1 else None,
            "n": ln.n, "cells": ln.total, "published_value": p.value_text if p else "",
            "published_std": (p.std_text or "") if p else "", "n_published": ln.n_published,
            "delta": ln.delta if _finite(ln.delta) else None, "bound_pp": ln.bound if p else None,
            "verdict_key": ln.verdict, "tolerance": resolved.spec.tolerance, "same_protocol": e.same_protocol,
            "provenance": p.provenance if p else "", "ref": p.id if p else "", "missing": e.missing,
            "reconstruction": e.reconstruction, "conflict": e.conflict,
            "note": NOTE_SEPARATOR.join(x for x in ((p.note if p else ""), e.note) if x),
            "failed": " ".join(c.run_id() for c, _ in ln.failed), "run_ids": " ".join(c.run_id() for c in e.cells),
        })
    return pd.DataFrame(rows)


MD_COLUMNS = ["benchmark", "method", "clmerge", "metric", "ours (n)", "published", "Δ", "bound", "verdict", "notes"]

CSV_COLUMNS = {  # frame column → CSV header
    "table": "table", "benchmark": "benchmark", "method_as_published": "method_as_published", "method_name": "method",
    "reconstruction": "reconstruction", "metric_key": "metric", "ours_mean": "ours_mean", "ours_std": "ours_std",
    "n": "n", "cells": "cells", "published_value": "published", "published_std": "published_std",
    "n_published": "n_published", "delta": "delta", "bound_pp": "bound", "verdict_key": "verdict",
    "tolerance": "tolerance", "same_protocol": "same_protocol", "provenance": "provenance", "ref": "ref",
    "missing": "missing", "conflict": "conflict", "note": "note", "failed": "failed", "run_ids": "run_ids",
}


def _grid_frame(resolved: ResolvedTable, lines: list[Line]) -> pd.DataFrame:
    """Grid tables: one row per benchmark × method, a mean ± std column per metric, n and status."""
    import pandas as pd

    metrics = list(resolved.spec.metrics)
    by_key: dict[tuple[str, str], dict[str, Line]] = {}
    for ln in lines:
        by_key.setdefault((ln.entry.benchmark, ln.entry.label), {})[ln.entry.metric] = ln
    rows = []
    for (bench, method), by_metric in by_key.items():
        first = by_metric[metrics[0]]
        row = {"benchmark": bench, "method": method_text(first)}
        for m in metrics:
            row[METRICS[m]] = mean_text(by_metric.get(m))
        row["n"] = f"{first.n}" if first.n == first.total else f"{first.n}/{first.total}"
        row["status"] = grid_status(first)
        for m in metrics:
            ln = by_metric.get(m)
            row[f"{m}_mean"] = ln.mean if ln is not None and ln.n else None
            row[f"{m}_std"] = ln.std if ln is not None and ln.n > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Markdown


def render_markdown(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any], status_cmd: str = "") -> str:
    spec = resolved.spec
    status_cmd = status_cmd or f"clmerge status {spec.name}"
    if spec.grid is not None:
        return _render_grid_markdown(resolved, lines, env, status_cmd)
    _, notes = _notes(lines)
    finished = len({r["run_id"] for ln in lines for r in ln.results})
    out = [f"### {spec.name}: {spec.title or spec.description}", ""]
    if spec.source:
        out.append(f"Published: {spec.source}.  ")
    out.append(f"{finished} of {len(resolved.cells())} clmerge cells finished; tolerance {spec.tolerance:.2f} pp.")
    if spec.protocol == "differs":
        out += ["", f"**Protocol differs — indicative only.** {spec.protocol_note}".rstrip()]
    out += ["", markdown_table(frame(resolved, lines)[MD_COLUMNS])]
    out += ["", f"**Verdicts:** {_counts(lines)}.", "",
            f"**Rule** (tolerance {spec.tolerance:.2f} percentage points): {VERDICT_RULE}", "",
            "Ours: mean ± std (ddof = 1) over the n finished seeds (n/N when some of N are missing), in %. Published values "
            "as printed, with the paper's std where it gives one; provenance per number in results/reference/published.csv. "
            "Δ and bound in percentage points."]
    if any(ln.entry.published and ln.entry.published.std is not None and ln.n_published is None for ln in lines):
        out += ["", "Where a published std comes without a seed count, it is treated as a standard error (n_pub = 1)."]
    out += _not_counted_and_reconstructed(lines, status_cmd)
    proto = _protocol_lines(resolved)
    if proto:
        out += ["", "**Protocol of the clmerge cells**", ""] + [f"- {p}" for p in proto]
    if notes:
        out += ["", "**Notes**", ""] + [f"{i}. {t}" for i, t in enumerate(notes, 1)]
    out += ["", "**Environment** (from the finished runs' result.json)", ""] + [f"- {x}" for x in env_lines(env)]
    return "\n".join(out) + "\n"


def _not_counted_and_reconstructed(lines: list[Line], status_cmd: str) -> list[str]:
    """Footer sections shared by both Markdown reports: cells left out of the means, and reconstructed methods."""
    out: list[str] = []
    status = _status_lines(lines, status_cmd)
    if status:
        out += ["", "**Cells not counted**", ""] + [f"- {s}" for s in status]
    recon = _reconstructions(lines)
    if recon:
        out += ["", "**Reconstructed methods**", ""] + [f"- {r}" for r in recon]
    return out


def _render_grid_markdown(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any], status_cmd: str) -> str:
    spec = resolved.spec
    metrics = list(spec.metrics)
    finished = len({r["run_id"] for ln in lines for r in ln.results})
    shown = ["benchmark", "method", *(METRICS[m] for m in metrics), "n", "status"]
    out = [f"### {spec.name}: {spec.title or spec.description}", "",
           f"Cells of grids/{spec.grid}.yaml; no published numbers. {finished} of {len(resolved.cells())} cells finished.", "",
           markdown_table(_grid_frame(resolved, lines)[shown])]
    out += ["", "Mean ± std (ddof = 1) over the n finished seeds, in %. A_last: accuracy on all seen classes after the last "
            "task (sample-weighted); A_avg: mean of that accuracy after each task; Forgetting: Chaudhry et al.'s, mean "
            "over old tasks of the best accuracy before the final task minus the final one."]
    out += _not_counted_and_reconstructed(lines, status_cmd)
    out += ["", "**Environment** (from the finished runs' result.json)", ""] + [f"- {x}" for x in env_lines(env)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# CSV


def render_csv(resolved: ResolvedTable, lines: list[Line]) -> str:
    if resolved.spec.grid is not None:
        f = _grid_frame(resolved, lines)
        keep = ["benchmark", "method", "n", "status"] + [c for c in f.columns if c.endswith(("_mean", "_std"))]
        return f[keep].to_csv(index=False, float_format="%.4f", lineterminator="\n")
    f = frame(resolved, lines)[list(CSV_COLUMNS)].rename(columns=CSV_COLUMNS)
    return f.to_csv(index=False, float_format="%.4f", lineterminator="\n")


# --------------------------------------------------------------------------------------------------------------------
# LaTeX

_TEX_MAP = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "±": r"$\pm$", "−": r"$-$", "–": "--", "—": "---", "→": r"$\rightarrow$", "×": r"$\times$", "α": r"$\alpha$",
    "Δ": r"$\Delta$", "σ": r"$\sigma$", "≤": r"$\leq$", "≥": r"$\geq$", "§": r"\S{}", "√": r"$\surd$", "²": r"$^2$",
    "†": r"$^\dagger$", "·": r"$\cdot$", "≈": r"$\approx$",
}

TEX_METRICS = {"a_last": r"$A_\mathrm{last}$", "a_avg": r"$A_\mathrm{avg}$", "forgetting": "Forgetting"}

# Verdict marks after our number in the paper-shaped LaTeX table (no extra packages needed).
TEX_MARKS = {REPRODUCED: r"$^{\surd}$", DIFFERS: r"$^{\times}$", PROTOCOL_DIFFERS: r"$^{\sim}$", PARTIAL: r"$^{p}$",
             FAILED: r"$^{f}$", CONFLICT: r"$^{c}$"}
NO_IMPLEMENTATION_TEXT = "n/i"  # in the Ours column instead of "--" (not run)
TEX_MARK_LEGEND = (r"$^{\surd}$ reproduced, $^{\times}$ differs, $^{\sim}$ protocol differs (no verdict), "
                   r"$^{p}$ partial (fewer seeds than asked: no verdict), $^{f}$ a cell failed, "
                   r"$^{c}$ the source gives conflicting numbers (no verdict); n/i no implementation in clmerge; "
                   r"-- not run")


def tex_escape(text: str) -> str:
    """Plain text → LaTeX (special characters escaped, a few Unicode symbols as math). A run of hyphens stays hyphens
    (`--source` must not typeset as an en dash): each hyphen followed by another gets an empty group, `-{}-`."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch == "-" and text[i + 1:i + 2] == "-":
            out.append("-{}")
        else:
            out.append(_TEX_MAP.get(ch, ch))
    return "".join(out)


def _comment(s: str) -> str:
    return "% " + str(s).replace("\n", " ")


WIDE_COLUMNS = 6  # a table with more columns spans both columns of a two-column paper (table*)
TEX_PACKAGES = r"\usepackage{booktabs,graphicx}"


def _styler_latex(table: pd.DataFrame, caption: str, label: str, column_format: str, index: bool = True) -> str:
    """pandas' Styler → a booktabs table (cells and labels already LaTeX; no multirow), made to fit a two-column
    paper: more than WIDE_COLUMNS columns → `table*` (both columns); the tabular is shrunk to the line width when
    wider, never enlarged (`\resizebox` of graphicx)."""
    style = table.style if index else table.style.hide(axis="index")
    tex = style.to_latex(
        caption=caption, label=label, position="t", position_float="centering", hrules=True,
        column_format=column_format, multicol_align="c", sparse_index=False,
    )
    start, end = tex.index("\\begin{tabular}"), tex.index("\\end{tabular}") + len("\\end{tabular}")
    tex = (tex[:start] + "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"
           + tex[start:end] + "%\n}" + tex[end:])
    if len(column_format) > WIDE_COLUMNS:
        tex = tex.replace("\\begin{table}", "\\begin{table*}").replace("\\end{table}", "\\end{table*}")
    return tex


def _with_footnotes(tex: str, foot: list[str]) -> str:
    """The table's footnotes under the tabular, inside the float (whichever: table or table*)."""
    if not foot:
        return tex
    end = "\\end{table*}" if "\\end{table*}" in tex else "\\end{table}"
    return tex.replace(end, "\\par\\smallskip\\footnotesize\n" + "\\\\\n".join(foot) + "\n" + end)


def render_latex(resolved: ResolvedTable, lines: list[Line], env: dict[str, Any]) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) in the paper's shape, then notes; environment as comments."""
    spec = resolved.spec
    head = [_comment(f"clmerge leaderboard table '{spec.name}' (harness/report/table_render.py). Requires {TEX_PACKAGES}."),
            _comment(f"Published: {spec.source}")]
    if spec.grid is None:
        head.append(_comment(f"Rule (tolerance {spec.tolerance:.2f} pp): {VERDICT_RULE}"))
    head += [_comment(x) for x in env_lines(env)]
    body = _grid_latex(resolved, lines) if spec.grid is not None else _paper_latex(resolved, lines)
    return "\n".join(head) + "\n" + body


def _paper_latex(resolved: ResolvedTable, lines: list[Line]) -> str:
    """Methods × (benchmark, metric): 'ours ± std' and the published number side by side, a verdict mark on ours."""
    import pandas as pd

    spec = resolved.spec
    refs, notes = _notes(lines)
    columns: list[tuple[str, str]] = []
    for ln in _grouped(lines):
        key = (ln.entry.benchmark, ln.entry.metric)
        if key not in columns:
            columns.append(key)
    multi_metric = len({m for _, m in columns}) > 1
    rows: dict[str, dict[tuple[str, str, str], str]] = {}
    for ln in lines:
        e = ln.entry
        name = tex_escape(e.label) + (r"$^\dagger$" if e.reconstruction else "")
        marks = r"\textsuperscript{" + ",".join(map(str, refs[id(ln)])) + "}" if refs[id(ln)] else ""
        bench = tex_escape(e.benchmark)
        sub = TEX_METRICS[e.metric] if multi_metric else ""
        k = 1
        label = name
        while label in rows and (bench, sub, "Ours") in rows[label]:  # the same method twice (e.g. logged runs)
            k += 1
            label = f"{name} ({k})"
        ours = NO_IMPLEMENTATION_TEXT if ln.verdict == NO_IMPLEMENTATION else "--"
        if e.implemented and ln.n:
            ours = f"{ln.mean:.2f}" + (rf"$\pm${ln.std:.2f}" if _finite(ln.std) else "")
        ours += TEX_MARKS.get(ln.verdict, "")
        rows.setdefault(label, {})[(bench, sub, "Ours")] = ours
        rows[label][(bench, sub, "Pub.")] = tex_escape(pub_text(ln)) + marks
    col_index = [(tex_escape(b), TEX_METRICS[m] if multi_metric else "", kind) for b, m in columns for kind in ("Ours", "Pub.")]
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=pd.MultiIndex.from_tuples(col_index)).fillna("")
    if not multi_metric:
        table.columns = table.columns.droplevel(1)
    caption = spec.title or spec.description
    if spec.protocol == "differs" and "indicative" not in caption:
        caption += ". Protocol differs from the published one: indicative only"
    caption = (tex_escape(caption) + r". Ours: mean $\pm$ std over the finished seeds; marks: " + TEX_MARK_LEGEND + ".")
    out = _styler_latex(table, caption, f"tab:clmerge-{spec.name}", "l" + "rr" * len(columns))
    foot = _reconstructions(lines, tex=True) + [f"{i}. {tex_escape(t)}" for i, t in enumerate(notes, 1)]
    return _with_footnotes(out, foot)


def _grid_latex(resolved: ResolvedTable, lines: list[Line]) -> str:
    spec = resolved.spec
    metrics = list(spec.metrics)
    f = _grid_frame(resolved, lines)
    table = f[["benchmark", "method", *(METRICS[m] for m in metrics), "n"]].map(tex_escape)
    table.columns = ["Benchmark", "Method", *(TEX_METRICS[m] for m in metrics), "n"]
    caption = tex_escape(spec.title or spec.description) + r". Mean $\pm$ std over n seeds."
    out = _styler_latex(table, caption, f"tab:clmerge-{spec.name}", "ll" + "r" * len(metrics) + "r", index=False)
    status = [tex_escape(x.replace("`", "")) for x in _status_lines(lines, f"clmerge status {spec.name}")]
    return _with_footnotes(out, _reconstructions(lines, tex=True) + status)


def aggregate_latex(agg: pd.DataFrame, name: str, columns: list[tuple[str, str]], footnotes: list[str] = ()) -> str:
    """A grid report's aggregate (harness/report/grid_report.py `aggregate`) as a booktabs table: mean ± std in %, n
    (failed cells counted), † on reconstructed methods with their footnote, then `footnotes` (the Markdown's)."""
    import math

    def cell(mean: float, std: float) -> str:
        if math.isnan(mean):
            return "--"
        return f"{100 * mean:.2f}" + (rf"$\pm${100 * std:.2f}" if not math.isnan(std) else "")

    table = agg[["benchmark", "method"]].map(tex_escape)
    recon = agg["reconstruction"].astype(bool) if "reconstruction" in agg else [False] * len(agg)
    table["method"] = [m + (r"$^\dagger$" if r else "") for m, r in zip(table["method"], recon)]
    for key, label in columns:
        table[tex_escape(label).replace("A\\_last", r"$A_\mathrm{last}$").replace("A\\_avg", r"$A_\mathrm{avg}$")] = [
            cell(m, s) for m, s in zip(agg[f"{key}_mean"], agg[f"{key}_std"])]
    failed = agg["failed"] if "failed" in agg else [0] * len(agg)
    table["n"] = [(f"{n}" if n == c else f"{n}/{c}") + (f" ({k} failed)" if k else "")
                  for n, c, k in zip(agg["n"], agg["cells"], failed)]
    table = table.rename(columns={"benchmark": "Benchmark", "method": "Method"})
    head = _comment(f"clmerge grid report '{name}' (harness/report/grid_report.py). Requires {TEX_PACKAGES}.")
    caption = tex_escape(f"{name}: mean ± std over n seeds (%)")
    tex = _styler_latex(table, caption, f"tab:clmerge-{name}", "ll" + "r" * (len(columns) + 1), index=False)
    notes = dict.fromkeys((m, t) for m, t in zip(agg["method"], agg.get("reconstruction", [""] * len(agg))) if t)
    foot = [rf"$^\dagger$ \texttt{{{tex_escape(m)}}} is (partly) a reconstruction: {tex_escape(t)}" for m, t in notes]
    foot += [tex_escape(x.replace("`", "")) for x in footnotes]
    return head + "\n" + _with_footnotes(tex, foot)
