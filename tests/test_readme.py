"""The README's examples run as written: its Python blocks, in order, in one fresh interpreter
with JAX's default settings (as a user runs them), and its `jaxjac` console commands."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_blocks_then_console_commands_run(tmp_path):
    blocks = _blocks("python")
    assert len(blocks) >= 7
    # The multi-host recipe reads its host's slice of a data file: give it one (3 inputs).
    np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(50, 3)))
    script = "\n\n".join(f"# --- README block {i}\n{b}" for i, b in enumerate(blocks))
    (tmp_path / "readme.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "readme.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss after 10 Gauss-Newton steps" in proc.stdout
    # The console examples use the files the Python blocks wrote (model.npz, data.csv).
    exe = Path(sys.executable).with_name("jaxjac")
    commands = [
        line[2:]
        for b in _blocks("console")
        for line in b.splitlines()
        if line.startswith("$ jaxjac")
    ]
    assert commands
    for command in commands:
        args = shlex.split(command)[1:]
        proc = subprocess.run(
            [str(exe), *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (command, proc.stderr)
    assert (tmp_path / "results" / "sensitivity.csv").exists()
