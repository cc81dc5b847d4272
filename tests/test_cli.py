"""The command line: readable output, JSON, and exit code 2 with one line for bad input."""

import json

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
