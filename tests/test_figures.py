"""Figures and tables for a paper: the Δ plot stays readable at 1–2 pp whatever else is in it, heatmap colours do not
inflate sub-point gaps, LaTeX compiles in a two-column paper with the Markdown's marks and footnotes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from harness.report import table_plots
from harness.report.table_plots import delta_scale, heatmap_range, plot_delta, row_labels
from harness.report.table_render import public_note, tex_escape
from harness.report.verdicts import DIFFERS, PROTOCOL_DIFFERS, REPRODUCED


def _line(bench, label, metric, delta, bound=1.0, verdict=REPRODUCED, table="Table 2 (main)", pid="x"):
    """A summarised row as plot_delta reads it."""
    return NS(entry=NS(published=NS(std=None, table=table, id=pid), benchmark=bench, label=label, metric=metric),
              n=3, delta=delta, std=0.8, bound=bound, verdict=verdict, n_published=None)


CONSTRUCTED = [  # one large Δ among small ones, two rows with the same method and metric, two metrics
    _line("imagenet-r-10", "LoRA", "a_last", -1.2, 1.1, DIFFERS, pid="a"),
    _line("imagenet-r-10", "P&M", "a_last", 0.6, 1.0, pid="b"),
    _line("imagenet-r-10", "P&M", "a_last", 1.7, 1.0, DIFFERS, table="Table 5 (ablation)", pid="c"),
    _line("imagenet-r-20", "TIES", "a_last", -30.4, 1.5, DIFFERS, pid="d"),
    _line("cifar100-10", "MagMax", "a_last", 0.3, 0.9, pid="e"),
    _line("imagenet-r-10", "LoRA", "a_avg", 0.9, 1.0, pid="f"),
    _line("imagenet-r-10", "P&M", "a_avg", -1.4, 1.0, PROTOCOL_DIFFERS, pid="g"),
]


def test_delta_scale_formula():
    # max(2 · max bound, 4 · median |Δ|, 2 pp)
    assert delta_scale([-1.2, 0.6, 1.7, -30.4, 0.3], [1.1, 1.0, 1.0, 1.5, 0.9]) == pytest.approx(4 * 1.2)
    assert delta_scale([0.1, 0.2], [1.6, 0.5]) == pytest.approx(3.2)
    assert delta_scale([0.1], [0.2]) == 2.0
    assert delta_scale([-20.0, -22.0, -18.0], [1.0] * 3) == pytest.approx(80.0)  # all large: all on scale


def test_delta_plot_keeps_small_rows_readable_next_to_a_large_one(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(table_plots, "_savefig", lambda fig, path: (drawn.append(fig), fig.savefig(path)))
    path = tmp_path / "delta.png"
    assert plot_delta(NS(spec=NS(name="constructed")), CONSTRUCTED, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    (fig,) = drawn
    a_last, a_avg = fig.axes[:2]  # one panel per metric
    assert a_last.get_title(loc="left") == "A_last" and a_avg.get_title(loc="left") == "A_avg"
    lo, hi = a_last.get_xlim()
    assert hi - lo < 11  # 1 pp is ≥ 9 % of the panel's width although one row is −30.4 pp …
    texts = [t.get_text() for t in a_last.texts]
    assert "-30.4 pp (off scale)" in texts  # … which is drawn at the edge with its value written out
    labels = [t.get_text() for t in a_last.get_yticklabels()]
    assert len(set(labels)) == len(labels) == 5 and "imagenet-r-10 · P&M · Table 5" in labels
    fig.canvas.draw()
    box = fig.bbox
    for ax in fig.axes:  # nothing clipped: every label inside the figure
        for artist in (ax.xaxis.label, *ax.get_yticklabels()):
            ext = artist.get_window_extent()
            assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1, artist.get_text()


def test_row_labels_name_the_source_only_when_needed():
    rows = [CONSTRUCTED[0], CONSTRUCTED[1], CONSTRUCTED[2]]
    assert row_labels(rows) == ["imagenet-r-10 · LoRA", "imagenet-r-10 · P&M · Table 2", "imagenet-r-10 · P&M · Table 5"]
    same_table = [_line("b", "M", "a_last", 1, pid="p1"), _line("b", "M", "a_last", 2, pid="p2")]
    assert row_labels(same_table) == ["b · M · p1", "b · M · p2"]


def test_heatmap_range_spans_at_least_twenty_points():
    lo, hi = heatmap_range(np.array([91.2, 92.0]))
    assert (lo, hi) == pytest.approx((80.0, 100.0))  # widened to 20 pp, pushed below 100
    assert heatmap_range(np.array([50.0, 52.0])) == pytest.approx((41.0, 61.0))
    assert heatmap_range(np.array([1.0, 3.0])) == pytest.approx((0.0, 20.0))  # pulled up to 0
    assert heatmap_range(np.array([10.0, 70.0, np.nan])) == pytest.approx((10.0, 70.0))  # wide data: its own range


def test_tex_escape_keeps_double_hyphens_and_notes_lose_internal_tags():
    assert tex_escape("--source or --split-file") == "-{}-source or -{}-split-file"
    assert tex_escape("a-b – c") == "a-b -- c"  # a single hyphen stays; the en dash is one on purpose
    assert public_note("pm-spec.md §8 [V N-en]: read from a note") == "pm-spec.md §8: read from a note"
    assert public_note("epochs [V SPLIT; ? P&M] set 1 [? P&M]") == "epochs set 1"


def _pdflatex() -> list[str] | None:
    if shutil.which("pdflatex"):
        return ["pdflatex", "-interaction=nonstopmode", "-halt-on-error"]
    if shutil.which("tectonic"):
        return ["tectonic", "--keep-logs"]
    return None


def _compile(tex: Path, tmp_path: Path) -> str:
    """Compile `tex` inside a two-column article; the log (raises if it does not compile)."""
    cmd = _pdflatex()
    if cmd is None:
        pytest.skip("no pdflatex or tectonic (.ci/run installs texlive-latex-base/-recommended)")
    doc = tmp_path / "paper.tex"
    doc.write_text("\\documentclass[twocolumn]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n"
                   f"\\usepackage{{booktabs,graphicx}}\n\\begin{{document}}\n\\input{{{tex}}}\nSome text.\n"
                   "\\end{document}\n")
    p = subprocess.run([*cmd, doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert p.returncode == 0, log[-3000:]
    return log


def test_published_table_latex_compiles_in_two_columns_with_marks_and_footnotes(tmp_path):
    from harness.report import leaderboard as lb

    md, paths = lb.write_report("pm-merging", tmp_path / "results", plots=False)
    tex = paths["latex"].read_text()
    assert "\\begin{table*}" in tex and "\\resizebox{" in tex  # 13 columns: spans both columns, shrunk to fit
    assert "[V " not in tex and "[V " not in md and "-{}-source" in tex
    notes = re.findall(r"^\d+\. ", md.split("**Notes**")[1].split("**Environment**")[0], re.M)
    assert len(notes) >= 5 and all(f"\n{i}. " in tex for i in range(1, len(notes) + 1))  # every Markdown footnote
    log = _compile(paths["latex"], tmp_path)
    assert "Overfull \\hbox" not in log


def test_grid_latex_keeps_marks_and_failed_cells_and_compiles(tmp_path, results, monkeypatch):
    import yaml

    from harness.dispatch.executors import dispatch
    from harness.dispatch.grid import expand, load_grid
    from harness.report.grid_report import report
    from methods.seq_lora import SeqLoRA
    from tests.conftest import FAST

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "benchmarks": ["split-digits-2x5"], "methods": ["pm", "seq-lora"],
                                    "seeds": [0], "overrides": dict(FAST)}))
    cells = expand(load_grid(str(grid)))
    monkeypatch.setattr(SeqLoRA, "end_task", lambda *a: (_ for _ in ()).throw(RuntimeError("merge exploded")))
    dispatch(cells, executor="debug", root=results, log=lambda _: None)
    md, paths = report("g", cells, results)
    tex = paths["latex"].read_text()
    assert "pm$^\\dagger$" in tex and "$^\\dagger$ \\texttt{pm} is (partly) a reconstruction" in tex
    assert "0/1 (1 failed)" in tex and "RuntimeError: merge exploded" in tex
    log = _compile(paths["latex"], tmp_path)
    assert "Overfull \\hbox" not in log
