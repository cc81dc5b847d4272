"""Spec files: a misspelt name in [values], [claimed_values] or [example] is reported by every
command, as a misspelt [model] field is; a plain number is a claimed L (issues 16.8, 10.9)."""

import pytest

from symbp.cli import main
from symbp.spec import loads

MODEL = '[model]\nsizes = [2, 2]\noutput = "identity"\nloss = "mse"\n'
VALUES = "[values]\nx = [[1], [2]]\ny = [[0], [1]]\nW1 = [[1, 0], [0, 1]]\nb1 = [[0], [0]]\n"


@pytest.mark.parametrize("extra, message", [
    ("[values]\nx = [[1], [2]]\nW11 = [[1]]\n", "values: unknown name 'W11' (did you mean 'W1'?); known: x, y, W1, b1"),
    ("[claimed_values]\ndz2 = [[1]]\n", "claimed_values: unknown name 'dz2' (did you mean 'dz1'?); known: z1, a1, L, "
                                       "dz1, da1, dW1, db1"),
    ("[claimed_values]\n\"dL/dW1\" = [[1]]\n", "claimed_values: unknown name 'dL/dW1' (write dW1 for dL/dW1)"),
    ("[example]\ntolerence = 0.1\n", "example: unknown key 'tolerence' (did you mean 'tolerance'?); known: tolerance, "
                                     "title, note"),
])
@pytest.mark.parametrize("command", ["verify", "example"])
def test_unknown_names_are_reported_by_every_command(tmp_path, capsys, extra, message, command):
    spec = tmp_path / "s.toml"
    claims = '[claims]\nz1 = "2 * (a1 - y) / 2"\n'
    spec.write_text(MODEL + claims + (VALUES if not extra.startswith("[values]") else "") + extra)
    assert main([command, str(spec)]) == 2
    assert capsys.readouterr().err == f"symbp {command}: error: {spec}: {message}\n"


def test_a_plain_number_is_a_claimed_loss(tmp_path, capsys):
    spec = loads(MODEL + VALUES + "[claimed_values]\nL = 1\n")
    assert spec.claimed_values == {"L": 1}
    path = tmp_path / "s.toml"
    path.write_text(MODEL + VALUES + "[claimed_values]\nL = 1\n")
    assert main(["example", str(path)]) == 0  # L = ((1 - 0)^2 + (2 - 1)^2) / 2 = 1
    assert "claimed cells: 1 of 1 right" in capsys.readouterr().out
    path.write_text(MODEL + VALUES + "[claimed_values]\ndz1 = 1\n")
    assert main(["example", str(path)]) == 2
    assert capsys.readouterr().err == "symbp example: error: claimed_values.dz1: expected nested lists of numbers, got 1\n"
