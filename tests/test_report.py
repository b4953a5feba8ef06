"""The report's rendering: numbers formatted by kind, Markdown rendered (not leaked) into a
self-contained HTML page with scrollable tables and inlined figures."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from tests.browser import inspect, problems

from diffpref import report


def test_numbers_are_formatted_by_kind():
    assert report.fmt("trainable_params", 121856.0) == "121856"
    assert report.fmt("peak_memory_mb", 820.29) == "820"
    assert report.fmt("train_time_s", 42.012) == "42.0"
    assert report.fmt("groups_per_s", 45.72) == "45.7"
    assert report.fmt("win_vs_base", 0.59876) == "0.599"
    assert report.fmt("n_seeds", 3.0) == "3"
    assert report.fmt("round", 2.0) == "2" and report.fmt("steps", 30.0) == "30"
    assert report.fmt("extra_images", 0.0) == "0"
    assert report.fmt("extra_sampling_time_s", 4.5) == "4.5"
    assert report.fmt("win_vs_base", float("nan")) == ""
    assert report.fmt("win_vs_base_ci", "[0.5, 0.6]") == "[0.5, 0.6]"


def small_report(tmp: Path) -> str:
    """A report page from the real template: a summary table with its figure, a verdict."""
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp / "win_vs_base.png")
    plt.close(fig)
    table = pd.DataFrame({"model": ["base", "dpo"], "win_vs_base": [float("nan"), 0.6]})
    sections = [
        report.Section("Summary", report.to_markdown(table), [tmp / "win_vs_base.png"]),
        report.Section("Verdicts", "- dpo: **yes**: the CI excludes 0.5 <script>x</script>"),
    ]
    return report.to_html("diffpref report", "profile smoke", sections)


def test_html_renders_markdown_tables_and_figures_self_contained(tmp_path):
    page = small_report(tmp_path)
    assert "**" not in page and "|---|" not in page  # no Markdown leaks through
    assert "<strong>yes</strong>" in page and "<li>" in page
    assert "<script>" not in page  # text is escaped, never executed
    assert re.search(r'<div class="scroll"><table>.*?</table></div>', page, re.S)
    assert "<td>0.600</td>" in page
    assert page.count("data:image/png;base64,") == 1
    assert "http://" not in page and "https://" not in page  # nothing to load from a network
    md = report.to_markdown_report(
        "diffpref report", [report.Section("Summary", "x", [tmp_path / "win_vs_base.png"])]
    )
    assert md.startswith("# diffpref report\n\n## Summary") and "(win_vs_base.png)" in md


def test_the_browser_check_catches_console_errors_broken_figures_and_leaks(tmp_path):
    """The positive control of the smoke report's browser check (tests/test_dag.py, the same
    :func:`tests.browser.problems`): a rendered page passes it; the same page with an error
    logged inline, an exception thrown by a script it loads, a figure that does not decode,
    Markdown shown as text and a first table wider than the window fails it on each count."""
    good = small_report(tmp_path)
    (tmp_path / "broken.js").write_text('throw new Error("a script the page loads threw");')
    bad = (
        good.replace("base64,", "base64,bm90IGEgUE5H", 1)  # "not a PNG" before the PNG
        .replace('<div class="scroll">', '<div class="scroll"><p style="width:3000px">wide</p>', 1)
        .replace(
            "</body>",
            '<p>**bold that was not rendered**</p><script>console.error("the page logged an '
            'error")</script><script src="broken.js"></script></body>',
        )
    )
    assert (
        bad.count("bm90IGEgUE5H") == 1 and bad.count("3000px") == 1 and bad.count("broken.js") == 1
    )
    pages = {"good": good, "bad": bad}
    for name, html in pages.items():
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.html").write_text(html)

    def check(name: str) -> list[str]:
        return problems(inspect(tmp_path / f"{name}.html", tmp_path / name))

    with ThreadPoolExecutor(2) as pool:  # one Chromium each, side by side
        found = dict(zip(pages, pool.map(check, pages)))
    assert found["good"] == []
    console = [f for f in found["bad"] if f.startswith("console: ")]
    assert len(console) == 2, found["bad"]
    assert '"the page logged an error", source: ' in console[0]
    assert '"Uncaught Error: a script the page loads threw", source: ' in console[1]
    assert console[1].endswith(f"{(tmp_path / 'broken.js').as_uri()} (1)")
    assert found["bad"][2:4] == ["1 of 1 images do not decode", "2 Markdown marks shown as text"]
    assert re.fullmatch(r"the first table overflows the window by \d+ px", found["bad"][4])
    assert len(found["bad"]) == 5


def test_the_smoke_run_gives_verdicts_on_the_judge_beside_the_label_model(smoke_reference):
    """Every model is scored by the judge too (not one of rewards.models); the summary shows
    the win rate vs base on the judge (the verdict) and on the label reward, and names their
    difference over-optimisation of the label model."""
    res = smoke_reference / "results"
    for folder in ("eval/base", "eval/dpo/seed0/round1"):
        scores = pd.read_parquet(res / folder / "scores.parquet")
        assert set(scores.reward) == {"fidelity", "quality", "judge"}, folder
    table = pd.read_csv(res / "report" / "comparison.csv").set_index("model")
    dpo = table.loc["dpo"]
    assert abs(dpo.label_minus_judge - (dpo.label_win_vs_base - dpo.win_vs_base)) < 1e-9
    md = (res / "report" / "report.md").read_text()
    summary = md.split("## Summary")[1].split("##")[0]
    assert "| label win | label − judge |" in summary  # the summary's display headers
    assert f"| {dpo.label_win_vs_base:.3f} | {dpo.label_minus_judge:.3f} |" in summary
    assert "win rates and verdicts use the judge, judge," in md
    assert "Over-optimisation of the label model: win rate vs base on the label reward " in md
