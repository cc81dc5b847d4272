"""The command line's output contract: numbers that are not numbers, strict JSON, exit codes,
warnings from generated code, and a closed pipe (issues 16.3 and 10.9)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import symbp
from symbp.cli import main

ROOT = Path(symbp.__file__).resolve().parent.parent  # the code under test, also in child processes


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "symbp", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def strict_json(text):
    """``json.loads`` that refuses NaN and Infinity, as any JSON parser but Python's does."""
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_a_nan_check_is_undecidable_not_passed(capsys):
    # log(x) at a random point with negative pre-activations: both engines give nan.
    assert main(["derive", "3,4,2", "--hidden", "log(x)"]) == 1
    out = capsys.readouterr().out
    assert "max abs error nan" not in out
    assert out.rstrip().endswith("numeric check at a random point (float64): UNDECIDABLE: the gradients are not "
                                 "finite there (nan or infinity), so the derivation is not checked")


def test_json_of_a_nan_check_is_strict_json(capsys):
    assert main(["derive", "3,4,2", "--hidden", "log(x)", "--json"]) == 1
    checks = strict_json(capsys.readouterr().out)["checks"]
    assert checks["numeric_max_abs_error"] == "nan" and checks["ok"] is False


def test_flow_at_an_overflowing_init_scale_says_so(capsys):
    code = main(["flow", "--depth", "3", "--width", "3", "--init-scale", "1e300", "--json"])
    payload = strict_json(capsys.readouterr().out)
    assert code == 1
    norms = [layer["activation_grad_norm"] for layer in payload["layers"]]
    assert "inf" in norms or "nan" in norms
    assert main(["flow", "--depth", "3", "--width", "3", "--init-scale", "1e300"]) == 1
    out = capsys.readouterr().out
    assert "zero throughout" not in out and "(agree)" not in out
    assert ("without skip connections: some norms are not finite (float64 overflow or 0/0 at init scale 1e+300): "
            "the flow cannot be read from these numbers") in out
    assert out.rstrip().endswith("(agree, but both overflowed float64 alike: do not read these numbers)")


def test_infinities_shared_by_both_engines_are_not_a_nan():
    # relu at init scale 3: a_L underflows to 0 where y = 1, so dL/da_L = -1/0 = -inf in both engines alike;
    # the run is finite where it is read (the norms), and the check agrees.
    assert main(["flow", "--depth", "20", "--width", "16", "--hidden", "relu", "--init-scale", "3"]) == 0


def test_max_errors_never_hide_a_nan():
    # max(0.0, nan) is 0.0 in Python: a nan after a finite entry used to read as "agree".
    good, bad = {"W1": np.zeros((1, 2)), "b1": np.zeros((1, 1))}, {"W1": np.zeros((1, 2)), "b1": np.full((1, 1), np.nan)}
    assert math.isnan(symbp.numeric.max_rel_error(bad, good))
    assert math.isnan(symbp.numeric.max_abs_error(good, bad))
    assert symbp.numeric.max_abs_error(good, good) == 0.0


def test_cross_entropy_upstream_is_zero_where_the_target_is_zero_even_if_a_underflows():
    # Logits 0 and -800: a_2 = exp(-800) underflows to 0 with y_2 = 0; dL/da_2 = -y_2/a_2 is 0 there, not 0/0.
    net = symbp.MLP([2, 2], output="softmax", loss="cross_entropy")
    values = {"x": np.zeros((2, 1)), "y": np.array([[1.0], [0.0]]), "W1": np.eye(2), "b1": np.array([[0.0], [-800.0]])}
    got = symbp.lambdify(net, symbp.derive(net))(**values)
    assert got["a1"].ravel().tolist() == [-1.0, 0.0]
    assert symbp.numeric.reference_gradients(net, values)["a1"].ravel().tolist() == [-1.0, 0.0]
    bce = symbp.MLP([2, 2], output="sigmoid", loss="binary_cross_entropy")
    values = dict(values, b1=np.array([[800.0], [-800.0]]))  # a = 1 with y = 1, a = 0 with y = 0
    for engine in (symbp.lambdify(bce, symbp.derive(bce))(**values), symbp.numeric.reference_gradients(bce, values)):
        assert engine["a1"].ravel().tolist() == [-0.5, 0.5]  # (-y/a + (1-y)/(1-a)) / 2, each 0/0 term 0


def test_no_warning_from_generated_code_reaches_the_user():
    done = run_cli("flow", "--depth", "3", "--width", "3", "--hidden", "relu", "--init-scale", "1e300")
    assert done.returncode == 1 and done.stderr == ""
    done = run_cli("derive", "3,4,2", "--hidden", "log(x)")
    assert done.returncode == 1 and done.stderr == ""


def test_no_flow_document_from_norms_that_are_not_numbers(tmp_path, capsys):
    code = main(["flow", "--depth", "3", "--width", "3", "--init-scale", "1e300", "-o", str(tmp_path / "f.tex")])
    assert code == 2 and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err == ("symbp flow: error: flow document: the gradient norms are not finite at init scale "
                                       "1e+300 (float64 overflow or 0/0), so there is nothing to plot or read; choose a "
                                       "smaller init scale\n")
