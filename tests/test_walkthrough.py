"""docs/walkthrough.md, executed: every `$ command` runs in a fresh directory, in order, and its
stdout must have the shape the document shows (numbers, hashes and the directory normalised).

Regenerate the document's outputs after a deliberate change with
``.venv/bin/python -m tests.test_walkthrough`` (it rewrites docs/walkthrough.md in place).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "walkthrough.md"
SHOWN_DIR = "/home/me/walkthrough"  # the directory the document pretends it ran in
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
PORT = re.compile(r"--port (\d+)")


def steps(doc: str) -> list[tuple[str, str]]:
    """(command, expected stdout) for every `$ ` line of the console blocks, in order."""
    found = []
    for block in BLOCK.findall(doc):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            found.append((command, output.rstrip("\n")))
    return found


def shape(text: str, cwd: str) -> list[str]:
    """Lines with the run's directory, hashes and numbers replaced: what must not drift."""
    text = text.replace(cwd, SHOWN_DIR)
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTSWAP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


@contextmanager
def background(command: str, cwd: Path) -> Iterator[None]:
    """A `... &` step (hotswap serve): started, waited for until /healthz answers, then stopped."""
    process = subprocess.Popen(
        command.removesuffix("&"),
        shell=True,
        cwd=cwd,
        env=environment(),
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    port = int(PORT.search(command).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command!r} did not start") from None
                time.sleep(0.3)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the shell and the server it started
        process.wait(timeout=20)


def run_all(cwd: Path) -> Iterator[tuple[str, str, str]]:
    """Run every step in ``cwd``; yield (command, expected, actual stdout)."""
    (cwd / "prepare.py").write_text(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0])
    with ExitStack() as stack:  # the server outlives its own step
        for command, expected in steps(DOC.read_text()):
            if command.endswith("&"):
                stack.enter_context(background(command, cwd))
                yield command, expected, ""
                continue
            result = subprocess.run(
                command, shell=True, cwd=cwd, env=environment(), capture_output=True, text=True
            )
            yield command, expected, result.stdout


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path) -> None:
    for command, expected, actual in run_all(tmp_path):
        assert shape(actual, str(tmp_path)) == shape(expected, SHOWN_DIR), command


def regenerate() -> None:
    """Rerun every step and write its real stdout back under it in docs/walkthrough.md."""
    doc = DOC.read_text()
    cwd = Path(tempfile.mkdtemp())
    outputs = iter([actual for _, _, actual in run_all(cwd)])  # in step order
    shutil.rmtree(cwd)

    def fill(block: re.Match[str]) -> str:
        parts = []
        for command, _ in steps(f"```console\n{block.group(1)}```"):
            shown = next(outputs).replace(str(cwd), SHOWN_DIR).rstrip("\n")
            parts.append(f"$ {command}\n" + (f"{shown}\n" if shown else ""))
        return "```console\n" + "".join(parts) + "```"

    DOC.write_text(BLOCK.sub(fill, doc))


if __name__ == "__main__":
    regenerate()
