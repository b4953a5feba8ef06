"""The step benchmark of docs/performance.md runs (on the CPU, at tiny size): every variant
trains the LoRA through diffpref's DPO loss and prints a throughput."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_every_step_variant_runs_and_reports_its_throughput():
    script = REPO / "workflow" / "scripts" / "bench_step.py"
    args = ["--device", "cpu", "--size", "tiny", "--pairs", "2", "--warmup", "1", "--steps", "1"]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    ).stdout
    rows = re.findall(r"^(.+?)\s+([\d.]+) pairs/s\s+(\d+) ms/step", out, re.M)
    assert [name for name, _, _ in rows] == [
        "autocast over bf16 (diffpref train)",
        "no autocast (pure bf16 base)",
        "autocast + channels_last",
        "no autocast + channels_last",
        "autocast + cudnn.benchmark",
        "no autocast + cudnn.benchmark",
    ], out
    assert all(float(rate) > 0 for _, rate, _ in rows)
