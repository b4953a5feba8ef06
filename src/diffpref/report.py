"""The comparison report's rendering: numbers formatted by kind, Markdown and a self-contained
HTML page. The numbers come from :mod:`diffpref.comparison`, the figures from
:mod:`diffpref.plots`."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

INTEGER_COLUMNS = ("_mb", "_params", "n_seeds", "n_prompts", "round", "steps", "_images")


def fmt(column: str, v) -> str:
    """A number as its kind reads best: counts (also rounds, steps, images) as integers, memory
    in whole MB, times and throughputs to one decimal, rates and rewards to three."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return str(v)
    if pd.isna(v):
        return ""
    v = float(v)
    if column.endswith(INTEGER_COLUMNS) or (v.is_integer() and abs(v) >= 100):
        return f"{v:.0f}"
    if column.endswith(("_s", "_per_s")):
        return f"{v:.1f}"
    return f"{v:.3f}"


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(c, r[c]) for c in cols) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """One part of the report: Markdown text and the figures shown under it."""

    title: str
    markdown: str
    figures: list[Path] = field(default_factory=list)


PACKAGE_DATA = ("templates",)  # the page's template: a dependency of the report stage
FIGURE_CAPTIONS = {
    "win_vs_base": "Win rate vs base per objective, 95% CI over training seeds x prompts",
    "rewards": "Held-out mean rewards per model, 95% CI",
    "category_accuracy": "Held-out accuracy per prompt category (mean over training seeds)",
    "poi": "P(row > column) over training seeds",
    "training_loss": "Training loss, one line per training seed",
    "image_grid": "The same held-out prompts and sampling seeds for every model",
    "online_rounds": "Win rate vs base and mean win reward by online round, 95% CI over training "
    "seeds x prompts; hollow: the compute-matched offline control",
}
ROUNDS_FIGURE = "online_rounds"  # drawn only when online rounds are configured


def to_markdown_report(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}\n\n{s.markdown}".rstrip())
        parts += [f"![{FIGURE_CAPTIONS.get(f.stem, f.stem)}]({f.name})" for f in s.figures]
    return "\n\n".join(parts) + "\n"


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """A self-contained page (figures inlined, no network) from the Jinja2 template; the
    sections' Markdown is rendered by markdown-it (CommonMark + tables), wide tables scroll."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    env = Environment(
        loader=PackageLoader("diffpref", PACKAGE_DATA[0]), autoescape=select_autoescape(["html"])
    )
    rendered = [
        {
            "title": s.title,
            "html": Markup(
                md.render(s.markdown)
                .replace("<table>", '<div class="scroll"><table>')
                .replace("</table>", "</table></div>")
            ),
            "figures": [
                {
                    "data": base64.b64encode(f.read_bytes()).decode(),
                    "caption": FIGURE_CAPTIONS.get(f.stem, f.stem),
                }
                for f in s.figures
            ],
        }
        for s in sections
    ]
    page = env.get_template("report.html.j2")
    return page.render(title=title, subtitle=subtitle, sections=rendered)
