"""The ``jaxjac`` command line: in-process through ``main``, and once as a console script."""

import subprocess
import sys
from pathlib import Path

import pytest

from jaxjac.cli import main


def test_demo_prints_the_closed_form_and_agreeing_routes(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Jacobian dA/dx" in out
    assert "Hessian d²A_1/dx²" in out
    assert "all routes agree" in out
    assert "ROUTES DISAGREE" not in out
    assert "det J = x - y = -3" in out
    assert "[[ 1.  1.]\n   [ 2. -1.]]" in out


def test_console_script_is_installed_and_rejects_unknown_commands():
    exe = Path(sys.executable).with_name("jaxjac")
    if not exe.exists():
        pytest.fail(f"no console script at {exe}: is the package installed in this venv?")
    proc = subprocess.run([exe, "no-such-command"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr
