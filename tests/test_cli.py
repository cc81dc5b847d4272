"""The command line: readable output, JSON, and exit code 2 with one line for bad input."""

import json
import time
from pathlib import Path

import pytest

from symbp.cli import main


def test_derive_prints_shapes_entries_and_checks(capsys):
    assert main(["derive", "4,5,3,3"]) == 0
    out = capsys.readouterr().out
    assert "MLP [4, 5, 3, 3]: hidden relu, relu; output softmax; loss cross_entropy" in out
    assert "  W1      5x4  dL/dW1[1,1] = dz1[1]*x[1]" in out
    assert "  z2      3x1  dL/dz2[1] = da2[1]*Heaviside(z2[1], 0)" in out
    error = float(out.split("max abs error ")[1].split()[0])
    assert error < 1e-12


def test_derive_json(capsys):
    assert main(["derive", "3,2", "--output", "sigmoid", "--loss", "binary_cross_entropy", "--batch", "2",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["sizes"] == [3, 2]
    assert payload["params"] == {"W1": {"shape": [2, 3], "entry": "dL/dW1[1,1] = dz1[1,1]*x[1,1] + dz1[2,1]*x[2,1]"},
                                 "b1": {"shape": [2, 1], "entry": "dL/db1[1] = dz1[1,1] + dz1[2,1]"}}
    assert payload["checks"]["numeric_max_abs_error"] < 1e-12
    assert payload["checks"]["finite_difference_max_abs_error"] < 1e-8
    assert payload["output"] is None


@pytest.mark.parametrize("argv, message", [
    (["derive", "4,0,3"], "symbp derive: error: sizes [4, 0, 3]: width n1 = 0 must be a positive integer"),
    (["derive", "4,3,3", "--hidden", "rleu"], "symbp derive: error: unknown activation 'rleu' (did you mean 'relu'?)"),
    (["derive", "4,3", "--batch", "-1"], "symbp derive: error: --batch -1: the batch size must be positive"),
    (["derive", "4,x"], "symbp derive: error: sizes '4,x': 'x' is not a whole number"),
    (["derive", "4,3", "--method", "guess"], "symbp derive: error: method: expected one of chain, expand"),
    (["derive"], "symbp derive: error: the following arguments are required: sizes"),
    (["nonsense"], "symbp: error: argument command: invalid choice: 'nonsense'"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) if argv in (["derive"], ["nonsense"]) else _returns(2) as result:
        code = main(argv)
        result.code = code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message)
    assert result.code == 2 if not hasattr(result, "value") else result.value.code == 2


class _returns:
    def __init__(self, code):
        self.expected = code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_help_states_the_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["derive", "--help"])
    out = capsys.readouterr().out
    assert "denominator layout: dL/dV has the shape of V" in out
    assert "relu'(0) = 0" in out


def test_a_negative_seed_is_bad_input(capsys):
    assert main(["derive", "2,2", "--seed", "-1"]) == 2
    assert capsys.readouterr().err == "symbp derive: error: seed: expected a whole number >= 0, got -1\n"


def test_output_in_a_missing_folder_fails_before_any_work(tmp_path, capsys):
    assert main(["flow", "--depth", "1", "--width", "2", "--init-scale", "1", "--classes", "2",
                 "-o", str(tmp_path / "missing" / "f.tex"), "--pdf"]) == 2
    assert "folder" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


SEED = str(Path(__file__).resolve().parent.parent / "symbp" / "data" / "seed000.toml")


@pytest.mark.parametrize("argv, line", [
    (["graph", "a*1e999999999", "--at", "a=1"],
     "symbp graph: error: expression 'a*1e999999999', column 3: 1e999999999: a number's exponent must be within +-300"),
    (["graph", "a*b", "--at", "a=1e-999999999,b=2"],
     "symbp graph: error: at a: value '1e-999999999', column 1: 1e-999999999: a number's exponent must be within +-300"),
    (["graph", "a**50", "--at", "a=2"], "symbp graph: error: expression 'a**50', column 4: exponent 50 is too large: "
     "the exponent of ** must be at most 16 in absolute value"),
    (["graph", "a*b", "--at", "ａ=1,b=2"], "symbp graph: error: point 'ａ=1,b=2': 'ａ' (U+FF41 FULLWIDTH LATIN SMALL "
     "LETTER A) at column 1 is not ASCII; write 'a'"),
    (["graph", "a*b", "--at", "a=１,b=2"], "symbp graph: error: point 'a=１,b=2': '１' (U+FF11 FULLWIDTH DIGIT ONE) at "
     "column 3 is not ASCII; write '1'"),
    (["graph", "ａ*b", "--at", "a=1,b=2"], "symbp graph: error: expression 'ａ*b': 'ａ' (U+FF41 FULLWIDTH LATIN SMALL "
     "LETTER A) at column 1 is not ASCII; write 'a'"),
    (["graph", "a*b", "--at", "a=1,2b=2"], "symbp graph: error: point 'a=1,2b=2': '2b' is not a variable name"),
    (["derive", "٣,٤,٢"], "symbp derive: error: sizes '٣,٤,٢': '٣' (U+0663 ARABIC-INDIC DIGIT THREE) at column 1 is "
     "not ASCII; write '3'"),
    (["derive", "4,３"], "symbp derive: error: sizes '4,３': '３' (U+FF13 FULLWIDTH DIGIT THREE) at column 3 is not "
     "ASCII; write '3'"),
    (["derive", "4,1_0"], "symbp derive: error: sizes '4,1_0': '1_0' is not a whole number (write e.g. 4,5,3,3)"),
    (["derive", "4,5", "--hidden", "ｘ*sigmoid(x)"], "symbp derive: error: activation 'ｘ*sigmoid(x)': 'ｘ' "
     "(U+FF58 FULLWIDTH LATIN SMALL LETTER X) at column 1 is not ASCII; write 'x'"),
    (["example", SEED, "--tolerance", "1e999"],
     "symbp example: error: tolerance '1e999', column 1: 1e999: a number's exponent must be within +-300"),
    (["example", SEED, "--tolerance", "log(0)"],
     "symbp example: error: tolerance 'log(0)', column 1: log(0) is not a finite number (zoo)"),
    (["example", SEED, "--tolerance", "-0.5"], "symbp example: error: tolerance: expected a finite number >= 0, "
     "got -1/2"),
])
def test_extreme_and_lookalike_input_is_one_line_exit_2_at_once(argv, line, capsys):
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 10  # refused at once, not after hours of big-number arithmetic
    assert capsys.readouterr().err == line + "\n"


def test_derive_exits_1_when_an_engine_disagrees_with_the_derivation(monkeypatch, capsys):
    """A numeric engine that differs from the derivation at float64 is a failed check, not a number to read."""
    from symbp import numeric

    real = numeric.reference_gradients

    def off(net, values):
        grads = real(net, values)
        grads["W2"] = grads["W2"] + 1e-6  # as if the derivation were wrong in one matrix
        return grads
    monkeypatch.setattr(numeric, "reference_gradients", off)
    assert main(["derive", "4,5,3,3"]) == 1
    out = capsys.readouterr().out
    assert "numeric check at a random point (float64): DISAGREES: max abs error 1.0e-06 vs NumPy reference backprop " \
           "(at least 1e-08): the derivation and that engine differ" in out
    assert main(["derive", "4,5,3,3", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["checks"]["ok"] is False
