"""Derivation documents never claim what was not checked, and are written (or refused with one line)
for any network the API accepts (issues 16.3, 16.6, 10.9)."""

import pytest

import symbp
from symbp import document
from symbp.cli import main
from symbp.errors import SymbpError


def test_a_nan_numeric_check_is_not_called_agreement():
    source = document.render(symbp.MLP([3, 4, 2], hidden="log(x)"))
    assert "agree with a plain NumPy backprop" not in source
    assert (r"were compared with a plain NumPy backprop at a random point: \fails{undecidable}, "
            "the gradients are not finite there (nan or infinity in float64).") in source
    # a network with a kink says the point keeps away from it
    kinked = document.render(symbp.MLP([3, 4, 2], hidden="log(relu(x))"))
    assert r"a plain NumPy backprop at a random point away from the kinks: \fails{undecidable}" in kinked


@pytest.mark.parametrize("hidden, reason", [
    ("x**16*1e20", "a cell of the worked example is about 4.30e+27, too large to print with 4 decimals"),  # x**100 is past the cap of **
    ("x*1e300", "a cell of the worked example is about -3.00e+300, too large to print with 4 decimals"),
    ("log(x)", "a cell of the worked example is 1.1 + 3.14*I, not a finite real number"),
])
def test_the_worked_example_is_left_out_with_the_reason(tmp_path, capsys, hidden, reason):
    out = tmp_path / "d.tex"
    assert main(["derive", "2,2,2", "--hidden", hidden, "-o", str(out)]) in (0, 1)
    capsys.readouterr()
    source = out.read_text()
    assert r"\section{A worked example}" + "\nThere is no worked example for this network: at symbp's example point " \
        + reason in source


@pytest.mark.parametrize("hidden", ["1/x", "exp(exp(exp(x)))"])
def test_a_worked_example_that_fits_is_kept(hidden):
    source = document.render(symbp.MLP([2, 2, 2], hidden=hidden))
    assert "Every cell of the forward and backward pass at one point" in source


def test_numerator_layout_is_refused_for_documents(tmp_path, capsys):
    assert main(["derive", "2,2", "--layout", "numerator", "-o", str(tmp_path / "d.tex")]) == 2
    assert capsys.readouterr().err == ("symbp derive: error: --layout numerator: the document is written in denominator "
                                       "layout only (dL/dV has the shape of V); leave out -o, or --layout\n")
    assert list(tmp_path.iterdir()) == []
    net = symbp.MLP([2, 2])
    with pytest.raises(SymbpError, match="document: written in denominator layout only"):
        document.render(net, grads=symbp.derive(net, layout="numerator"))
