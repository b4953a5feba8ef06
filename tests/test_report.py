"""The report's rendering: numbers formatted by kind, Markdown rendered (not leaked) into a
self-contained HTML page with scrollable tables and inlined figures."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pandas as pd

from diffpref import report


def test_numbers_are_formatted_by_kind():
    assert report.fmt("trainable_params", 121856.0) == "121856"
    assert report.fmt("peak_memory_mb", 820.29) == "820"
    assert report.fmt("train_time_s", 42.012) == "42.0"
    assert report.fmt("groups_per_s", 45.72) == "45.7"
    assert report.fmt("win_vs_base", 0.59876) == "0.599"
    assert report.fmt("n_seeds", 3.0) == "3"
    assert report.fmt("win_vs_base", float("nan")) == ""
    assert report.fmt("win_vs_base_ci", "[0.5, 0.6]") == "[0.5, 0.6]"


def test_html_renders_markdown_tables_and_figures_self_contained(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp_path / "win_vs_base.png")
    plt.close(fig)
    table = pd.DataFrame({"model": ["base", "dpo"], "win_vs_base": [float("nan"), 0.6]})
    sections = [
        report.Section("Summary", report.to_markdown(table), [tmp_path / "win_vs_base.png"]),
        report.Section("Verdicts", "- dpo: **yes**: the CI excludes 0.5 <script>x</script>"),
    ]
    page = report.to_html("diffpref report", "profile smoke", sections)
    assert "**" not in page and "|---|" not in page  # no Markdown leaks through
    assert "<strong>yes</strong>" in page and "<li>" in page
    assert "<script>" not in page  # text is escaped, never executed
    assert re.search(r'<div class="scroll"><table>.*?</table></div>', page, re.S)
    assert "<td>0.600</td>" in page
    assert page.count("data:image/png;base64,") == 1
    assert "http://" not in page and "https://" not in page  # nothing to load from a network
    md = report.to_markdown_report("diffpref report", sections)
    assert md.startswith("# diffpref report\n\n## Summary") and "(win_vs_base.png)" in md
