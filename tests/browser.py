"""A real headless Chromium looking at a report page, as a person would open it.

Chromium (Debian's ``chromium``) comes from ``workflow/scripts/install.sh --tests``. A small
wrapper page loads the report in a 1280 px wide frame and measures it from inside the browser
(``--allow-file-access-from-files`` lets the wrapper read the framed file's DOM); ``--dump-dom``
returns the wrapper with the measurements, and the browser's console log comes on stderr.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]

WRAPPER = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="{url}" style="width:{width}px;height:900px;border:0"></iframe>
<pre id="out"></pre>
<script>
window.addEventListener("load", () => {{
  const d = document.getElementById("f").contentDocument;
  const imgs = [...d.images];
  const first = d.querySelector(".scroll");
  document.getElementById("out").textContent = JSON.stringify({{
    title: d.title,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    markdown_leaks: (d.body.innerText.match(/\\*\\*|\\|---\\|/g) || []).length,
    first_table_overflow_px: first ? first.scrollWidth - first.clientWidth : null,
  }});
}});
</script></body></html>"""


def require_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("no chromium: run `bash workflow/scripts/install.sh --tests`")
    return CHROMIUM


def inspect(page: Path, tmp: Path, width: int = 1280) -> dict:
    """Load ``page`` in Chromium at ``width`` px: its measurements plus ``console``, the
    console messages the page itself logged (errors included)."""
    chromium = require_chromium()
    wrapper = tmp / "inspect.html"
    wrapper.write_text(WRAPPER.format(url=page.resolve().as_uri(), width=width))
    p = subprocess.run(
        [
            chromium,
            *FLAGS,
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            wrapper.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="out">(.*?)</pre>', p.stdout, re.S)
    assert found and found.group(1), f"chromium measured nothing:\n{p.stderr[-2000:]}"
    out = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    out["console"] = console_messages(p.stderr, wrapper)
    return out


def console_messages(stderr: str, wrapper: Path) -> list[str]:
    """The console lines Chromium logged for the framed page: its inline scripts and every
    script it loads (their source is that script's file, not the page), not the wrapper's."""
    own = f"source: {wrapper.as_uri()} "
    return [line for line in stderr.splitlines() if "CONSOLE" in line and own not in line]


def problems(page: dict) -> list[str]:
    """What a person would see wrong on a page :func:`inspect` measured: anything logged to the
    console, figures that do not decode, Markdown shown as text, a first table wider than
    the window. The report's browser check and its positive control share it."""
    found = [f"console: {line}" for line in page["console"]]
    if page["broken_images"]:
        found.append(f"{page['broken_images']} of {page['images']} images do not decode")
    if page["markdown_leaks"]:
        found.append(f"{page['markdown_leaks']} Markdown marks shown as text")
    if page["first_table_overflow_px"]:
        found.append(
            f"the first table overflows the window by {page['first_table_overflow_px']} px"
        )
    return found


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 1600) -> None:
    subprocess.run(
        [
            require_chromium(),
            *FLAGS,
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )


def dump_dom(url: str, budget_ms: int = 30_000) -> str:
    """The DOM of ``url`` once its scripts have run (a single-page app such as MLflow's UI)."""
    p = subprocess.run(
        [
            require_chromium(),
            *FLAGS,
            "--window-size=1600,1200",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return p.stdout
