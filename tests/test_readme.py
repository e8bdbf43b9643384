"""The README's examples run as written: its Python blocks, in order, in one fresh interpreter
with JAX's default settings (as a user runs them), and its `jaxjac` console commands. The
README is a reference: it quotes no dated runs, commit hashes or issue numbers (those belong in
benchmarks/README.md)."""

import os
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
    assert len(blocks) >= 9
    # Every block must run to its end: each is followed by a line that says so. The blocks make
    # every file they read (the multi-host recipe its data set, in a temporary folder), so
    # nothing is prepared here; temporary folders go under tmp_path.
    script = "\n\n".join(
        f"# --- README block {i}\n{b}\nprint({_DONE.format(i)!r}, flush=True)"
        for i, b in enumerate(blocks)
    )
    (tmp_path / "readme.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "readme.py"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.findall(r"(?m)^" + _DONE.format(r"(\d+)") + "$", proc.stdout)
    assert done == [str(i) for i in range(len(blocks))], (done, proc.stdout[-3000:])
    _check_curvature_example(proc.stdout)
    # The console examples use the files the Python blocks wrote (model.npz, data.csv).
    exe = Path(sys.executable).with_name("jaxjac")
    commands = _console_commands()
    assert commands
    for command, quoted in commands:
        args = shlex.split(command)[1:]
        proc = subprocess.run(
            [str(exe), *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (command, proc.stderr)
        if quoted:
            _check_quoted_output(quoted, proc.stdout)
    assert (tmp_path / "results" / "sensitivity.csv").exists()


_DONE = "README block {} ran to its end"


def test_readme_quotes_no_dates_hashes_or_issues():
    """Dated runs, commit hashes and issue numbers stay out of the README (the failure lists
    them); performance history lives in benchmarks/README.md, which the README links."""
    text = README.read_text()
    month = r"January|February|March|April|May|June|July|August|September|October|November|December"
    patterns = {
        "date": rf"\b\d{{4}}-\d\d-\d\d\b|\b\d{{1,2}} (?:{month})\b|\b(?:{month}) \d{{4}}\b",
        "commit hash": r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b",
        "issue number": r"(?i)\b(?:issue|PR|pull request) ?#?\d+|(?<![\w&])#\d+\b",
        "session diary": r"(?i)\bthis (?:session|machine)\b",
    }
    found = {k: re.findall(p, text) for k, p in patterns.items()}
    assert not any(found.values()), found
    assert "(benchmarks/README.md)" in text


def _console_commands() -> list[tuple[str, str]]:
    """``(command, the output the README shows under it)`` for every ``$ jaxjac`` line."""
    found = []
    for block in _blocks("console"):
        for part in re.split(r"(?m)^(?=\$ )", block):
            first, _, rest = part.partition("\n")
            if first.startswith("$ jaxjac"):
                found.append((first[2:], rest))
    return found


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"


def _check_quoted_output(quoted: str, printed: str) -> None:
    """The README's quoted output is what the command prints, timings aside.

    The words must match exactly; every quoted number must match the printed one to half a
    unit of its last quoted digit, plus as much again for rounding on another CPU (integers,
    such as counts and row numbers, exactly).
    """
    timing = r"\d+(?:\.\d+)? s$"  # the run time ends the first line
    quoted = re.sub(timing, "<time>", quoted.strip(), count=1, flags=re.M)
    printed = re.sub(timing, "<time>", printed.strip(), count=1, flags=re.M)
    assert re.split(_NUMBER, quoted) == re.split(_NUMBER, printed), (quoted, printed)
    for want, got in zip(re.findall(_NUMBER, quoted), re.findall(_NUMBER, printed), strict=True):
        mantissa, _, exponent = want.lower().partition("e")
        if "." not in mantissa:
            assert got == want, (want, got, printed)
            continue
        unit = 10.0 ** (int(exponent or 0) - len(mantissa.split(".")[1]))
        assert abs(float(got) - float(want)) <= unit, (want, got, printed)


def _numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r}"
    return [float(g) for g in match.groups()]


def _check_curvature_example(stdout: str) -> None:
    """The curvature section's output says what its prose claims.

    The prose quotes the tracked sharpness to one decimal and the losses to one or two
    significant digits; the run is float32 on whatever CPU runs the suite. Quoted and printed
    values may then differ by half a unit of the last quoted digit, and as much again is
    allowed for float32 differences between machines: 0.1 on a sharpness, 10 % on a loss.
    """
    rows = [
        tuple(float(g) for g in m.groups())
        for m in re.finditer(
            r"^step +(\d+) +loss ([\d.]+) +sharpness +([\d.]+) +\(2/lr = ([\d.]+)\)$",
            stdout,
            flags=re.M,
        )
    ]
    assert len(rows) == 6, stdout[-3000:]  # steps 0, 50, …, 250
    steps, losses, sharp, edge = (np.array(col) for col in zip(*rows, strict=True))
    assert np.all(steps == np.arange(0, 300, 50)) and np.all(edge == edge[0])
    # Progressive sharpening in the stable regime: the tracked top eigenvalue rises at every
    # report and stays below 2/lr (Lanczos Ritz values never exceed the top eigenvalue, so an
    # estimate above 2/lr would mean the true one is too), while the loss falls at every report.
    assert np.all(np.diff(sharp) > 0), sharp
    assert np.all(sharp < edge), (sharp, edge[0])
    assert np.all(np.diff(losses) < 0), losses
    # After the last step the on-demand sharpness has reached the edge. At the edge of
    # stability gradient descent self-stabilises with the sharpness hovering at 2/lr; 5 % either
    # side is the margin allowed for that oscillation (here it is within 0.1 %).
    (final,) = _numbers(r"(?m)^sharpness ([\d.e+-]+)$", stdout)
    assert abs(final - edge[0]) <= 0.05 * edge[0], (final, edge[0])
    (top,) = _numbers(r"(?m)^top-3 \[\s*([\d.e+-]+)", stdout)
    assert abs(top - final) <= 1e-3 * final  # the same eigenvalue, two Lanczos runs (float32)
    (gn_loss,) = _numbers(r"(?m)^loss after 10 Gauss-Newton steps ([\d.e+-]+)$", stdout)
    assert gn_loss < losses[-1]

    prose = README.read_text()
    quoted = prose[prose.index("Output (float32): the sharpness climbs") :]
    climbs = re.search(r"climbs ([\d.]+(?: → [\d.]+)+) towards 2/lr = ([\d.]+)", quoted)
    assert climbs, "the README's curvature output sentence changed: update this test"
    values = [float(v) for v in climbs.group(1).split(" → ")]
    assert len(values) == len(sharp) and np.all(np.abs(sharp - values) <= 0.1), (sharp, values)
    assert float(climbs.group(2)) == edge[0]
    start, end = _numbers(r"loss falls from ([\d.]+) to ([\d.]+)", quoted)
    assert abs(losses[0] / start - 1) <= 0.1 and abs(losses[-1] / end - 1) <= 0.1, losses
    # "about 1e-4": the same order of magnitude, within a factor 2 either way.
    (about,) = _numbers(r"bring the loss to about\s+(\d+(?:\.\d+)?e[+-]?\d+)", quoted)
    assert about / 2 <= gn_loss <= 2 * about, (gn_loss, about)
