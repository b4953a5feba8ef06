"""The suite's own promises: every test docs/reliability.md links exists, and under `.ci/run`
(``DIFFPREF_REQUIRE_TOOLS=1``) a skipped test fails instead of passing unseen."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from tests.conftest import REPO

RELIABILITY = REPO / "docs" / "reliability.md"
# a Test cell's link: [`tests/x.py::test_name[a, b]`](../tests/x.py)
LINK = re.compile(r"\[`(tests/[^`]+)`\]\(\.\./([^)]+)\)")
TEST_ID = re.compile(r"(?P<file>tests/[\w/]+\.py)::(?P<name>\w+)(?:\[(?P<params>[^\]]+)\])?")


def table_rows(text: str) -> list[str]:
    """The body rows of the document's tables (not their header and separator lines)."""
    lines = text.splitlines()
    return [
        line
        for i, line in enumerate(lines)
        if line.startswith("|")
        and not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line)
        and not (i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]))
    ]


def linked_ids(row: str) -> list[str]:
    """The test ids a row's Test cell links, each parametrized case on its own: the
    document's ``test_name[a, b]`` stands for ``test_name[a]`` and ``test_name[b]``. A link
    whose target is not the id's file, or that is not a test id, is an error."""
    ids = []
    for text, target in LINK.findall(row.rsplit("|", 2)[-2]):
        m = TEST_ID.fullmatch(text)
        assert m, f"not a test id: {text!r} in\n{row}"
        assert target == m["file"], f"{text} links {target}, not its file"
        base = f"{m['file']}::{m['name']}"
        ids += [f"{base}[{p}]" for p in m["params"].split(", ")] if m["params"] else [base]
    return ids


def collected(files: list[str]) -> set[str]:
    """The node ids pytest collects from ``files``, by pytest's own collection in this
    process (the test modules a whole-suite run has imported are not imported again)."""

    class Ids:
        def __init__(self) -> None:
            self.found: set[str] = set()

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            self.found = {item.nodeid for item in session.items}

    ids = Ids()
    args = ["--collect-only", "-o", "addopts=", "-p", "no:terminal", "-p", "no:cacheprovider"]
    # no unraisableexception: its five gc.collect() passes over a heap holding torch take seconds
    args += ["-p", "no:unraisableexception", f"--rootdir={REPO}"]
    code = pytest.main([*args, *(str(REPO / f) for f in files)], plugins=[ids])
    assert code == pytest.ExitCode.OK, f"collecting {files} failed ({code!r})"
    return ids.found


def test_every_test_the_reliability_table_links_exists():
    """Each row of docs/reliability.md names at least one test, and every test id it links is
    one pytest collects (a renamed test or parameter breaks its row here, not in review)."""
    rows = table_rows(RELIABILITY.read_text())
    assert len(rows) > 50
    links = {row: linked_ids(row) for row in rows}
    untested = [row for row, ids in links.items() if not ids]
    assert not untested, f"docs/reliability.md rows without a test: {untested}"
    wanted = {i for ids in links.values() for i in ids}
    have = collected(sorted({i.split("::")[0] for i in wanted}))

    def exists(test_id: str) -> bool:  # a bare name of a parametrized test: all its cases
        return test_id in have or (
            "[" not in test_id and any(h.startswith(test_id + "[") for h in have)
        )

    missing = sorted(i for i in wanted if not exists(i))
    assert not missing, f"docs/reliability.md links tests that do not exist: {missing}"


SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no frobnicator: install it")

@pytest.mark.skipif(True, reason="no widget")
def test_marked():
    pass

@pytest.fixture
def tool():
    pytest.skip("no tool")

def test_needs_a_tool(tool):
    pass

@pytest.mark.xfail(reason="a known failure, not a skip")
def test_known():
    assert False
"""


def test_a_skip_fails_under_ci_and_is_a_skip_otherwise(tmp_path):
    """`.ci/run` exports DIFFPREF_REQUIRE_TOOLS=1: then a test skipped in its body, by a
    ``skipif`` mark or by its fixture fails, naming why it skipped (an xfail stays one);
    without it they skip; a value other than 0 or 1 stops pytest before any test."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    ci = (REPO / ".ci" / "run").read_text()
    assert "export DIFFPREF_REQUIRE_TOOLS=1\n" in ci.split("python3 -m pytest")[0]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "tests.require_tools"]
    cmd += ["-p", "no:cacheprovider", f"--rootdir={tmp_path}", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "DIFFPREF_REQUIRE_TOOLS"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    runs = {  # side by side
        value: subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env if value is None else env | {"DIFFPREF_REQUIRE_TOOLS": value},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for value in ("1", None, "yes")
    }
    (code, out), (plain_code, plain), (bad_code, bad) = (
        (p.wait(60), p.stdout.read()) for p in runs.values()
    )
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in out
    why = "skipped, and DIFFPREF_REQUIRE_TOOLS=1 makes a skip fail"
    for name, reason in [
        ("test_skips", "no frobnicator: install it"),
        ("test_marked", "no widget"),
        ("test_needs_a_tool", "no tool"),
    ]:
        assert re.search(rf"^(FAILED|ERROR) \S*test_skipping.py::{name}\b", out, re.M), name
        assert f"{why}: {reason}\n" in out, name
    assert plain_code == pytest.ExitCode.OK and "1 passed, 3 skipped, 1 xfailed" in plain, plain
    assert bad_code == pytest.ExitCode.USAGE_ERROR, bad
    assert "DIFFPREF_REQUIRE_TOOLS='yes': use 1 (a skipped test fails) or 0" in bad
