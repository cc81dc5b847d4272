"""The Python API: a wrong name or type is a SymbpError naming the culprit, never a bare
KeyError or TypeError (issue 16.6)."""

import pytest

import symbp
from symbp.errors import SymbpError


@pytest.fixture(scope="module")
def net():
    return symbp.MLP([2, 2, 2])


def test_an_unknown_gradient_names_itself_and_the_known_ones(net):
    grads = symbp.derive(net)
    with pytest.raises(SymbpError) as caught:
        grads["W9"]
    assert str(caught.value) == "no gradient named 'W9'; have W1, b1, W2, b2, z1, a1, z2, a2"
    assert isinstance(caught.value, KeyError)  # still a mapping: `in` and .get work
    assert "W9" not in grads and grads.get("W9") is None and "W1" in grads
    with pytest.raises(SymbpError, match=r"no gradient named 'dW1'; .* \(did you mean 'W1'\?\)"):
        grads["dW1"]
    with pytest.raises(SymbpError, match="no gradient named 3"):
        grads[3]


def test_wrong_types_are_symbp_errors(net):
    with pytest.raises(SymbpError, match="textbook: expected a symbp.MLP or a network of layers, got str"):
        symbp.textbook("x")
    with pytest.raises(SymbpError, match="a variable's name is a string such as 'W1', not int 5"):
        net.shape(5)
    with pytest.raises(SymbpError, match="unknown variable 'W9'; this network has x, y, W1"):
        net.shape("W9")
    with pytest.raises(SymbpError, match="derive: expected a symbp.MLP or symbp.network, got str"):
        symbp.derive("x")
