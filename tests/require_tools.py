"""With ``DIFFPREF_REQUIRE_TOOLS=1`` (set by ``.ci/run``) a skipped test fails.

Every skip in this suite stands for a missing tool or data set (Chromium, PostgreSQL, SLURM and
munge, Fashion-MNIST, an optional package), and CI installs them all: there a skip means a
broken install whose tests never ran, so it must not pass. ``pytest`` without the variable
keeps the skips (each says how to install what it needs). Loaded by ``tests/conftest.py``;
light on purpose (a test loads it into a pytest of its own).
"""

from __future__ import annotations

import os

import pytest

ENV = "DIFFPREF_REQUIRE_TOOLS"


def required() -> bool:
    """Whether skips fail: ``1`` yes, ``0`` or unset no; anything else is a usage error (a
    typo must not quietly let skips pass)."""
    value = os.environ.get(ENV, "0")
    if value not in ("0", "1"):
        raise pytest.UsageError(f"{ENV}={value!r}: use 1 (a skipped test fails) or 0")
    return value == "1"


def pytest_configure(config: pytest.Config) -> None:
    required()  # a bad value stops the run before any test


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and required():
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, and {ENV}=1 makes a skip fail: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    _fail_if_skipped(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    _fail_if_skipped(report)  # a module skipped as a whole (allow_module_level)
    return report
