"""The ``jaxjac`` command line: in-process through ``main``, and once as a console script."""

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from jaxjac.cli import main

PYPROJECT = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()


def test_demo_prints_the_closed_form_and_agreeing_routes(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Jacobian dA/dx" in out
    # The network [3, 5, 4, 2] has two outputs, numbered from 1 like the layers W1 … W3.
    assert "Hessian d²A_1/dx²" in out and "Hessian d²A_2/dx²" in out
    assert "A_0" not in out and "A_3" not in out
    assert "outputs A_1 … A_2, inputs x_1 … x_3 and layers W1 … W3 are numbered from 1" in out
    assert "all routes agree" in out
    assert "ROUTES DISAGREE" not in out
    assert "det J = x - y = -3" in out
    assert "[[ 1.  1.]\n   [ 2. -1.]]" in out


def test_demo_computes_the_determinant_with_the_library(capsys, monkeypatch):
    import jaxjac as jj

    calls = []
    real = jj.jacobian_det

    def spy(f, x):
        calls.append(x)
        return real(f, x)

    monkeypatch.setattr(jj, "jacobian_det", spy)
    assert main(["demo"]) == 0
    assert len(calls) == 1 and np.asarray(calls[0]).tolist() == [-1.0, 2.0]
    assert "det J = x - y = -3: the map scales area by 3 and flips orientation" in (
        capsys.readouterr().out
    )


def test_console_script_is_installed_and_rejects_unknown_commands():
    exe = Path(sys.executable).with_name("jaxjac")
    if not exe.exists():
        pytest.fail(f"no console script at {exe}: is the package installed in this venv?")
    proc = subprocess.run([exe, "no-such-command"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_prints_the_package_version_and_exits_0():
    (expected,) = re.findall(r'^version = "([^"]+)"$', PYPROJECT, flags=re.M)
    exe = Path(sys.executable).with_name("jaxjac")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"jaxjac {expected}\n"
    assert proc.stderr == ""


# --- jaxjac sensitivity -------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULTS = ("sensitivity.csv", "report.json", "sensitivity.png", "interactions.png")


@pytest.fixture(scope="module")
def model():
    import jax
    import jax.numpy as jnp

    import jaxjac as jj

    return jj.mlp_init(jax.random.key(11), [3, 6, 2], dtype=jnp.float64)


@pytest.fixture
def files(tmp_path, model):
    from jaxjac.io import save_params

    xs = np.random.default_rng(5).uniform(-1.0, 1.0, size=(300, 3))
    save_params(tmp_path / "model.npz", model)
    np.save(tmp_path / "data.npy", xs)
    header = "speed,load,temp\n"
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in xs)
    (tmp_path / "data.csv").write_text(header + rows + "\n")
    return tmp_path, xs


def _sensitivity_argv(folder):
    """``jaxjac sensitivity`` on the fixture's model and data, before any option."""
    return [
        "sensitivity",
        "--params",
        str(folder / "model.npz"),
        "--data",
        str(folder / "data.npy"),
    ]


def _assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def _read_csv(path):
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_sensitivity_end_to_end_on_npz_and_csv(files, model, capsys):
    from jaxjac.sensitivity import sensitivity

    folder, xs = files
    out = folder / "out"
    argv = ["sensitivity", "--params", str(folder / "model.npz"), "--data"]
    # "--bounds -1:1" as two words: argparse alone would take "-1:1" for an unknown option.
    argv += [str(folder / "data.csv"), "--out", str(out), "--bounds", "-1:1", "--chunk-size", "64"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    first = printed.out.splitlines()[0]
    prefix = "jaxjac sensitivity: MLP [3, 6, 2] (tansig), float64, 300 rows used, 0 dropped, "
    assert first.startswith(prefix + "closed form route, ") and first.endswith(" s"), first
    assert printed.err == ""
    assert sorted(p.name for p in out.iterdir()) == [
        "report.json",
        "sensitivity.csv",
        "sensitivity.png",
    ]
    rows = _read_csv(out / "sensitivity.csv")
    assert [r["feature"] for r in rows[:3]] == ["speed", "load", "temp"]
    assert {
        "output",
        "feature",
        "mean_abs",
        "dgsm",
        "dgsm_se",
        "mean_abs_se",
        "sobol_upper",
    } <= set(rows[0])
    import jaxjac as jj

    ref = sensitivity(jj.mlp_apply, model, xs, bounds=[-1.0, 1.0])
    got = np.array([float(r["dgsm"]) for r in rows]).reshape(2, 3)
    np.testing.assert_allclose(got, ref.dgsm, rtol=1e-12)
    upper = np.array([float(r["sobol_upper"]) for r in rows]).reshape(2, 3)
    np.testing.assert_allclose(upper, ref.sobol_upper, rtol=1e-12)
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == {
        "file": str(folder / "model.npz"),
        "sizes": [3, 6, 2],
        "activation": "tansig",
        "n_params": 38,
    }
    assert report["data"]["rows"] == 300 and report["data"]["rows_dropped"] == 0
    assert report["options"]["dtype"] == "float64"
    assert report["options"]["bounds"] == [[-1.0, 1.0]] * 3
    assert set(report["timings_s"]) >= {"load", "compute"}
    assert set(report["versions"]) >= {"jaxjac", "jax", "jaxlib", "numpy", "python"}
    assert report["results"]["feature_names"] == ["speed", "load", "temp"]
    _assert_png(out / "sensitivity.png")
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp or checkpoint left


def test_sensitivity_summary_names_the_row_of_the_largest_singular_value(files, model, capsys):
    import jax

    import jaxjac as jj

    folder, xs = files
    argv = _sensitivity_argv(folder)
    assert main([*argv, "--out", str(folder / "out")]) == 0
    printed = capsys.readouterr().out
    # Independently of the library's routes: autodiff Jacobians, numpy's SVD, numpy's argmax.
    jacobians = jax.vmap(jax.jacfwd(lambda x: jj.mlp_apply(model, x)))(xs)  # (300, 2, 3)
    sigma = np.linalg.svd(np.asarray(jacobians), compute_uv=False)[:, 0]
    row = int(np.argmax(sigma))
    runner_up = np.sort(sigma)[-2]
    assert sigma[row] - runner_up > 1e-9 * sigma[row]  # the argmax is no near-tie
    assert f"largest singular value of J: max {sigma[row]:.4g} (data row {row + 1}, 1-based)" in (
        printed
    )


def test_sensitivity_mat_model_npy_data_and_hessian(files, model, capsys):
    import scipy.io

    folder, _ = files
    arrays = {}
    for i, layer in enumerate(model, start=1):
        arrays[f"W{i}"] = np.asarray(layer["W"])
        arrays[f"b{i}"] = np.asarray(layer["b"]).reshape(-1, 1)
    scipy.io.savemat(folder / "net.mat", arrays)
    out = folder / "out"
    argv = ["sensitivity", "--params", str(folder / "net.mat"), "--data", str(folder / "data.npy")]
    assert main([*argv, "--out", str(out), "--hessian", "--quiet", "--sigma", "0.5"]) == 0
    assert capsys.readouterr().out == ""
    _assert_png(out / "interactions.png")
    _assert_png(out / "sensitivity.png")
    results = json.loads((out / "report.json").read_text())["results"]
    assert np.array(results["interactions"]).shape == (2, 3, 3)
    assert results["feature_names"] == ["x1", "x2", "x3"]
    np.testing.assert_allclose(results["bound_constants"], [0.25] * 3)
    # a later run without --hessian does not leave the old heatmap passing as its own
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert not (out / "interactions.png").exists()


def test_sensitivity_interrupted_then_resumed_gives_the_same_table(files, capsys):
    folder, _ = files
    base = _sensitivity_argv(folder)
    base += ["--chunk-size", "50", "--quiet", "--hessian"]
    assert main([*base, "--out", str(folder / "full")]) == 0
    assert main([*base, "--out", str(folder / "part"), "--max-chunks", "2"]) == 3
    err = capsys.readouterr().err
    assert "stopped after 2 chunks (100 of 300 rows)" in err and "--resume" in err
    assert not (folder / "part" / "sensitivity.csv").exists()
    assert (folder / "part" / "sensitivity.checkpoint.npz").exists()
    assert main([*base, "--out", str(folder / "part"), "--resume"]) == 0
    full = (folder / "full" / "sensitivity.csv").read_text()
    assert (folder / "part" / "sensitivity.csv").read_text() == full
    assert not (folder / "part" / "sensitivity.checkpoint.npz").exists()


def test_sensitivity_resume_with_changed_data_is_refused(files, capsys):
    folder, xs = files
    base = _sensitivity_argv(folder)
    base += ["--chunk-size", "50", "--quiet", "--out", str(folder / "out")]
    assert main([*base, "--max-chunks", "1"]) == 3
    changed = xs.copy()
    changed[0, 0] = 0.123
    np.save(folder / "data.npy", changed)
    capsys.readouterr()
    assert main([*base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "different inputs" in err
        and "(data, data file modification time differ)" in err
    )
    # The advice in the CLI's words, not the library's keyword.
    assert err.rstrip().endswith("; start over without --resume, or remove the checkpoint folder")
    assert "resume=False" not in err


def test_sensitivity_resume_without_a_checkpoint_says_so_on_stderr_even_when_quiet(files, capsys):
    folder, _ = files
    out = folder / "mistyped"
    argv = _sensitivity_argv(folder)
    assert main([*argv, "--out", str(out), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no checkpoint in {out}: starting from the first row" in captured.err
    assert main([*argv, "--out", str(out), "--resume"]) == 0  # finished: no checkpoint left
    captured = capsys.readouterr()
    assert "no checkpoint" not in captured.out
    assert f"no checkpoint in {out}: starting from the first row" in captured.err


def test_sensitivity_drop_nonfinite_reports_the_count(files, capsys):
    folder, xs = files
    bad = xs.copy()
    bad[[2, 7], 1] = np.nan
    np.save(folder / "bad.npy", bad)
    argv = ["sensitivity", "--params", str(folder / "model.npz"), "--data", str(folder / "bad.npy")]
    assert main([*argv, "--out", str(folder / "out"), "--drop-nonfinite"]) == 0
    assert "298 rows used, 2 dropped" in capsys.readouterr().out
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["data"]["rows_dropped"] == 2


def _layers(model, start):
    return {
        f"{k}{i}": np.asarray(v) for i, layer in enumerate(model, start) for k, v in layer.items()
    }


def test_sensitivity_failed_or_stopped_run_leaves_no_earlier_results(files, capsys):
    folder, xs = files
    bad = xs.copy()
    bad[5, 0] = np.nan
    np.save(folder / "nan.npy", bad)
    out = folder / "out"
    base = ["sensitivity", "--params", str(folder / "model.npz"), "--out", str(out), "--quiet"]
    good = [*base, "--data", str(folder / "data.npy"), "--hessian", "--chunk-size", "50"]

    def results():
        return sorted(name for name in RESULTS if (out / name).exists())

    assert main(good) == 0 and results() == sorted(RESULTS)
    assert main([*base, "--data", str(folder / "nan.npy")]) == 2  # no --drop-nonfinite
    err = capsys.readouterr().err
    assert "non-finite" in err
    # The advice in the CLI's words, not the library's keyword.
    assert err.rstrip().endswith("; pass --drop-nonfinite to skip such rows")
    assert "drop_nonfinite=True" not in err
    assert results() == []
    assert main(good) == 0 and results() == sorted(RESULTS)
    assert main([*good, "--max-chunks", "2"]) == 3
    assert results() == []
    assert (out / "sensitivity.checkpoint.npz").exists()
    assert main(good) == 0  # a fresh start without --resume: the stale checkpoint is replaced
    assert main([*good, "--max-chunks", "1"]) == 3
    assert main([*good, "--resume", "--max-chunks", "2"]) == 3  # resumed, then stopped again
    assert results() == []
    assert main([*good, "--resume"]) == 0 and results() == sorted(RESULTS)


def test_sensitivity_records_the_devices_used(files):
    import jax

    folder, _ = files
    argv = _sensitivity_argv(folder)
    assert main([*argv, "--out", str(folder / "all"), "--quiet"]) == 0
    report = json.loads((folder / "all" / "report.json").read_text())
    assert report["options"]["devices"] == len(jax.local_devices())
    assert main([*argv, "--out", str(folder / "one"), "--quiet", "--devices", "1"]) == 0
    assert json.loads((folder / "one" / "report.json").read_text())["options"]["devices"] == 1


def test_sensitivity_into_a_closed_pipe_exits_quietly(files):
    # `jaxjac sensitivity … | head`: the reader is gone before the summary is printed.
    folder, _ = files
    exe = Path(sys.executable).with_name("jaxjac")
    argv = [exe, "sensitivity", "--params", folder / "model.npz", "--data", folder / "data.npy"]
    argv += ["--out", folder / "piped"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()
        err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err, err
    assert (folder / "piped" / "sensitivity.csv").exists()  # the run itself succeeded


def _bad_inputs(folder, model):
    """(name, argv edits, expected message) for every bad input the CLI must refuse."""
    from jaxjac.io import save_params

    np.save(folder / "wide.npy", np.ones((4, 5)))
    (folder / "text.csv").write_text("a,b,c\n1,2,3\n4,five,6\n")
    (folder / "nan.csv").write_text("1,2,3\n4,nan,6\n7,8,9\n")
    np.save(folder / "nan.npy", np.array([[1.0, 2, 3], [4, 5, 6], [np.inf, 8, 9]]))
    missing = {f"W{i}": np.asarray(layer["W"]) for i, layer in enumerate(model, start=1)}
    np.savez(folder / "missing.npz", **missing, b1=np.asarray(model[0]["b"]))
    save_params(folder / "skew.npz", [model[0], {"W": np.ones((2, 5)), "b": np.ones(2)}])
    np.save(folder / "objects.npy", np.array([[{"x": 1}]], dtype=object), allow_pickle=True)
    (folder / "afile").write_text("I am a file")
    np.savez_compressed(folder / "corrupt.npz", **_layers(model, start=1))
    raw = bytearray((folder / "corrupt.npz").read_bytes())
    raw[60:70] = bytes(b ^ 0xFF for b in raw[60:70])  # inside W1's deflate stream: zlib.error
    (folder / "corrupt.npz").write_bytes(bytes(raw))
    (folder / "long.csv").write_text("a,b,c\n1,2,3\n4,5," + "6" * 140_000 + "\n")
    np.savez(folder / "zero.npz", **_layers(model, start=0))  # W0, b0, W1, b1
    (folder / "latin.csv").write_bytes("a,b,c\n1,2,3\ncafé,2,3\n".encode("latin-1"))
    (folder / "text.npy").write_text("1,2,3\n")
    (folder / "text.npz").write_text("W1 = [1, 2]\n")
    (folder / "text.mat").write_text("W1 = [1, 2]\n" * 20)
    (folder / "blank.csv").write_text("a,b,c\n\n\n1,2,3\n\n4,5,x")
    (folder / "header.csv").write_text("a,a,\n1,2,3\n")
    return [
        ("width", {"--data": "wide.npy"}, "data has 5 columns but the model in"),
        (
            "text",
            {"--data": "text.csv"},
            "data row 2 (line 3), column 2 ('b'): expected a number, found 'five'",
        ),
        (
            "nan",
            {"--data": "nan.csv"},
            f"error: {folder / 'nan.csv'}: data row 2 (1-based) has a non-finite value in "
            "column 2 ('x2') = nan",
        ),
        (
            "nan-npy",
            {"--data": "nan.npy"},
            f"error: {folder / 'nan.npy'}: data row 3 (1-based) has a non-finite value in "
            "column 1 ('x1') = inf",
        ),
        ("missing", {"--params": "missing.npz"}, "missing b2"),
        ("skew", {"--params": "skew.npz"}, "W2 in"),
        ("objects", {"--data": "objects.npy"}, "found Python objects (refusing to unpickle)"),
        ("out-file", {"--out": "afile"}, "expected a folder (existing or new), found a file"),
        ("no-model", {"--params": "nothing.npz"}, "model file: expected an existing file"),
        ("no-data", {"--data": "nothing.csv"}, "data file: expected an existing file"),
        ("bounds", {"--bounds": "1:0"}, "--bounds: expected LO:HI"),
        ("bounds-negative", {"--bounds": "-1:-2"}, "--bounds: expected LO:HI"),
        (
            "sigma-negative",
            {"--sigma": "-0.5,1"},
            "--sigma: expected one standard deviation or 3 comma-separated ones, all positive, "
            "found '-0.5,1'",
        ),
        ("activation", {"--activation": "nope"}, "--activation: expected one of"),
        ("corrupt-npz", {"--params": "corrupt.npz"}, "corrupt.npz: expected an .npz archive"),
        (
            "long-cell",
            {"--data": "long.csv"},
            "line 3: expected cells of at most 131072 characters",
        ),
        ("from-0", {"--params": "zero.npz"}, "expected layers numbered from 1 (W1, b1, …)"),
        (
            "latin-1",
            {"--data": "latin.csv"},
            "latin.csv: line 3: expected UTF-8 text, found byte 0xe9",
        ),
        ("text-npy", {"--data": "text.npy"}, "expected a .npy file (NPY header) holding an array"),
        ("text-npz", {"--params": "text.npz"}, "text.npz: expected an .npz archive (zip file)"),
        ("text-mat", {"--params": "text.mat"}, "text.mat: expected a MATLAB .mat file (a v4 to v7"),
        ("blank-lines", {"--data": "blank.csv"}, "data row 2 (line 6), column 3 ('c')"),
        (
            "header",
            {"--data": "header.csv"},
            "found 'a' in columns 1 and 2; an empty name in column 3",
        ),
        ("out-parent", {"--out": "afile/sub"}, f"found a file at {folder / 'afile'}"),
        ("devices", {"--devices": "999"}, "--devices 999: expected at most "),
    ]


def test_sensitivity_bad_inputs_exit_2_with_one_line_and_no_results(files, model, capsys):
    folder, _ = files
    cases = _bad_inputs(folder, model)
    for name, edits, message in cases:
        options = {"--params": "model.npz", "--data": "data.npy", "--out": f"out-{name}"}
        options.update(edits)
        argv = ["sensitivity", "--quiet"]
        for key, value in options.items():
            raw = key in ("--bounds", "--sigma", "--activation", "--devices")
            argv += [key, value if raw else str(folder / value)]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1, (name, err)
        assert err.startswith("jaxjac sensitivity: error: "), (name, err)
        assert message in err, (name, err)
        assert "Traceback" not in err and "allow_pickle" not in err and "Errno" not in err
        out = folder / options["--out"]
        if out.is_dir():
            assert not any((out / result).exists() for result in RESULTS), name


def test_sensitivity_console_script_reports_a_bad_file_in_one_line(files):
    folder, _ = files
    exe = Path(sys.executable).with_name("jaxjac")
    argv = [exe, "sensitivity", "--params", folder / "data.npy", "--data", folder / "data.npy"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "expected a model file ending in .npz or .mat, found '.npy'" in proc.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--chunk-size", "0"], "argument --chunk-size: expected a positive integer, found 0"),
        (["--max-chunks", "x"], "argument --max-chunks: expected a positive integer, found 'x'"),
        ([], "the following arguments are required: --params"),
        (["--bounds", "--hessian"], "argument --bounds: expected one argument"),
    ],
)
def test_sensitivity_usage_errors_are_one_line(files, capsys, option, message):
    folder, _ = files
    argv = ["sensitivity", "--data", str(folder / "data.npy")]
    if option:
        argv += ["--params", str(folder / "model.npz"), *option]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err and "(see jaxjac sensitivity --help)" in err


def test_sensitivity_negative_bounds_per_feature_as_separate_words(files, capsys):
    folder, _ = files
    argv = _sensitivity_argv(folder)
    argv += ["--out", str(folder / "out"), "--quiet", "--bounds", "-2:1,-1:1,0:3"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["options"]["bounds"] == [[-2.0, 1.0], [-1.0, 1.0], [0.0, 3.0]]
    # C = (b - a)² / π² per feature for the uniform bounds
    np.testing.assert_allclose(
        report["results"]["bound_constants"], np.array([9.0, 4.0, 9.0]) / np.pi**2, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("module", "model_file", "purpose"),
    [
        ("matplotlib", "model.npz", "writing the plots needs matplotlib"),
        ("scipy.io", "net.mat", "reading a MATLAB .mat model needs scipy.io"),
    ],
)
def test_sensitivity_missing_cli_extra_names_the_pip_command(
    files, model, capsys, monkeypatch, module, model_file, purpose
):
    from jaxjac.io import save_params

    folder, _ = files
    save_params(folder / "net.mat", model)
    (cli_extra,) = re.findall(r"^cli = \[(.*)\]$", PYPROJECT, flags=re.M)  # the extra named
    assert '"matplotlib>=' in cli_extra and '"scipy>=' in cli_extra
    monkeypatch.setitem(sys.modules, module, None)  # the next `import module` raises ImportError
    out = folder / "out"
    argv = ["sensitivity", "--params", str(folder / model_file), "--data"]
    assert main([*argv, str(folder / "data.npy"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"jaxjac sensitivity: error: {purpose}, which could not be imported")
    assert err.endswith(": pip install 'jaxjac[cli]'\n"), err
    assert not out.exists()  # refused before any computing


def test_interactions_heatmap_scale_is_set_by_the_off_diagonal(tmp_path, monkeypatch):
    plots, figures = _capture_figures(monkeypatch)
    # Pure second derivatives 100x the interactions: on one scale every interaction looks 0.
    matrix = np.array([[100.0, 1.0, 2.0], [1.0, 300.0, 0.5], [2.0, 0.5, 200.0]])
    report = types.SimpleNamespace(
        interactions=matrix[None], feature_names=["a", "b", "c"], output_names=["y"]
    )
    plots.plot_interactions(report, tmp_path / "i.png")
    (fig,) = figures
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0.0, 2.0)
    shown = image.get_array()
    assert shown.mask.tolist() == np.eye(3, dtype=bool).tolist()  # the diagonal is off the scale
    # Every cell's value is written in it (3 ≤ 12 features), at (column j, row i).
    cells = {tuple(t.get_position()): t.get_text() for t in fig.axes[0].texts}
    assert len(fig.axes[0].texts) == 9
    assert cells == {
        (0, 0): "100",
        (1, 0): "1",
        (2, 0): "2",
        (0, 1): "1",
        (1, 1): "300",
        (2, 1): "0.5",
        (0, 2): "2",
        (1, 2): "0.5",
        (2, 2): "200",
    }
    title = " ".join(fig.get_suptitle().split())  # the title is wrapped to the figure's width
    assert "diagonal excluded from the colour scale" in title


def _capture_figures(monkeypatch):
    import jaxjac.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, target: figures.append(fig))
    return plots, figures


def test_interactions_heatmap_writes_no_values_beyond_12_features(tmp_path, monkeypatch):
    plots, figures = _capture_figures(monkeypatch)
    for n_in in (12, 13):
        matrix = np.arange(1.0, n_in * n_in + 1).reshape(n_in, n_in)
        report = types.SimpleNamespace(
            interactions=(matrix + matrix.T)[None],
            feature_names=[f"x{i}" for i in range(1, n_in + 1)],
            output_names=["y"],
        )
        plots.plot_interactions(report, tmp_path / "i.png")
    small, large = figures
    assert len(small.axes[0].texts) == 12 * 12
    assert len(large.axes[0].texts) == 0
    assert "values in report.json" in " ".join(large.get_suptitle().split())


def test_sensitivity_plot_says_what_it_shows_and_labels_the_error_bars(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    plots, figures = _capture_figures(monkeypatch)
    dgsm = np.array([[4.0, 1.0, 9.0], [0.5, 2.0, 0.25]])
    se = np.array([[0.4, 0.1, 0.3], [0.05, 0.2, 0.01]])
    report = types.SimpleNamespace(
        dgsm=dgsm, dgsm_se=se, feature_names=["a", "b", "c"], output_names=["y1", "y2"]
    )
    plots.plot_sensitivity(report, tmp_path / "s.png")
    (fig,) = figures
    title = " ".join(fig.get_suptitle().split())
    assert "DGSM E[(∂f/∂xᵢ)²]" in title and "error bars ±1 standard error" in title
    for k, ax in enumerate(fig.axes[:2]):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DGSM", "±1 standard error"]
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars.get_label() == "±1 standard error"
        # Each bar's error segment spans DGSM ± 1 standard error, largest DGSM on top.
        (segments,) = [line.get_segments() for line in bars.lines[2]]
        order = np.argsort(dgsm[k])  # bottom to top
        spans = np.array([[seg[0][0], seg[1][0]] for seg in segments])
        expected = np.stack([dgsm[k, order] - se[k, order], dgsm[k, order] + se[k, order]], 1)
        np.testing.assert_allclose(spans, expected, rtol=1e-12)
