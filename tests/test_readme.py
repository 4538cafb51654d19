"""Every code block of the README runs as written.

- ```python blocks run, each on its own, in a fresh interpreter in an empty folder (so a block may not
  lean on an earlier one or on files of the repository).
- ```bash blocks run with `bash -euo pipefail` in an empty folder; a block that installs the package
  (`pip install`) runs in the repository root, and only in CI (CI=true; .ci/run sets nothing else),
  since it changes the environment and writes out/.
- ```text blocks are synopses and sample output: not run.
Any other language tag, or an untagged fenced block, fails the test: say what a block is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)


def readme_blocks(path: Path = ROOT / "README.md") -> list[tuple[int, str, str]]:
    """(line number, language, code) of every fenced block; indentation of list items removed."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        indent, lang, body = match.group(1), match.group(2), match.group(3)
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines())
        blocks.append((text[:match.start()].count("\n") + 1, lang, code + "\n"))
    return blocks


BLOCKS = readme_blocks()


def test_every_block_says_what_it_is():
    assert BLOCKS, "the README has no code blocks"
    bad = [(line, lang) for line, lang, _ in BLOCKS if lang not in ("python", "bash", "text")]
    assert not bad, f"README blocks with no or an unknown language tag (line, tag): {bad}"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


RUNNABLE = [(line, lang, code) for line, lang, code in BLOCKS if lang in ("python", "bash")]


@pytest.mark.parametrize("line, lang, code", RUNNABLE, ids=[f"line{line}-{lang}" for line, lang, _ in RUNNABLE])
def test_readme_block_runs(tmp_path, line, lang, code):
    if lang == "python":
        cmd, cwd = [sys.executable, "-c", code], tmp_path
    else:
        installs = "pip install" in code
        if installs and os.environ.get("CI") != "true":
            pytest.skip("installs the package and writes out/ in the repository: run in CI only (CI=true)")
        cmd, cwd = ["bash", "-euo", "pipefail", "-c", code], ROOT if installs else tmp_path
    # its own process group: whatever the block leaves running (a server it forgot to stop) is killed, and
    # cannot hold the output pipes open past the block
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"README block at line {line} ({lang}) ran past 900 s:\n{code}\n{stderr[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, (f"README block at line {line} ({lang}) failed with exit code "
                                  f"{proc.returncode}:\n{code}\n--- stderr ---\n{stderr[-3000:]}")


def test_the_readme_test_command_is_what_ci_runs():
    """The README's test command is a text block (running it from a test would recurse); .ci/run runs it."""
    [command] = [code.strip() for _, lang, code in BLOCKS
                 if lang == "text" and "python -m pytest" in code and "pip install" in code]
    ci = (ROOT / ".ci" / "run").read_text()
    for step in command.split(" && "):
        words = step.split()
        tool = "pytest" if "pytest" in words else words[0]
        assert tool in ci and words[-1] in ci, f".ci/run does not run the README's step {step!r}"
