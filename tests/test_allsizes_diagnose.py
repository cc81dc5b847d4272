"""Diagnosis in general form (symbp.allsizes.diagnose, issue 12 item 5): a failed claim's usual mistake
named with sizes by name (``1/N``, not 0.25; ``n3``, not ``n2``, when both are 3), each correction
counted only when it is *proved* for all sizes; verify keeps the concrete refutation and factor."""

import pytest

import symbp
from symbp import allsizes
from symbp.formula import parse

SIDE = "every target row sums to 1"


def _diagnose(net, target, claim, **kwargs):
    return allsizes.diagnose(net, target, parse(claim, net), **kwargs)


def _proved(net, target, text):
    return allsizes.try_prove(net, target, parse(text, net))[0] is not None


def test_a_missing_mean_over_the_batch_is_one_over_N_not_a_quarter():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    found = _diagnose(net, "z3", "a3 - y")
    assert (found.name, found.claim, found.factor, found.value) == ("scaled", "(a3 - y) / N", 1 / allsizes.World(net).N, 0.25)
    assert found.assumptions == (SIDE,)
    result = symbp.verify(net, {"z3": "a3 - y"}).results[0]
    assert (result.verdict, result.diagnosis, result.factor) == ("fails", "scaled", 0.25)  # the concrete number kept
    assert result.expected == "(a3 - y) / N" and result.got == "a3 - y"
    assert result.detail.startswith("multiplied by 1/N it holds for all sizes (the 1/N of the mean over the batch "
                                    f"is missing) (assuming {SIDE}); at dL/dz3[1,1]: expected ")
    assert result.assumptions == (SIDE,)
    assert "multiplied by 1/4 it holds" in symbp.verify(net, {"z3": "a3 - y"}, sizes="given").results[0].detail
    from symbp.grade import words

    assert words(result.to_json()).endswith(" the right answer is 1/4 times yours (a missing or doubled 1/N of the "
                                            "mean over the batch is the usual cause). For all sizes, the right "
                                            "answer is (a3 - y) / N.")


def test_a_width_of_the_same_value_as_another_is_named_by_the_proof():
    # n2 = n3 = 3: the concrete ratio 1/3 fits 1/n2 (tried first) and 1/n3; only 1/n3 is proved (mse averages
    # over the n3 outputs), so the diagnosis names n3
    net = symbp.MLP([4, 5, 3, 3], output="identity", loss="mse")
    assert symbp.textbook(net)["a3"] == "2 * (a3 - y) / n3"
    assert not _proved(net, "a3", "2 * (a3 - y) / n2")
    for ratio in (None, 1 / 3):
        found = _diagnose(net, "a3", "2 * (a3 - y)", ratio=ratio)
        assert (found.name, found.claim, found.detail) == ("scaled", "2 * (a3 - y) / n3",
                                                           "multiplied by 1/n3 it holds for all sizes")
    result = symbp.verify(net, {"a3": "2 * (a3 - y)"}).results[0]
    assert (result.diagnosis, result.expected) == ("scaled", "2 * (a3 - y) / n3")
    assert result.factor == pytest.approx(1 / 3)


def test_a_flipped_sign_is_named_and_removed_where_it_was_written():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    found = _diagnose(net, "a2", "-dz3 @ W3")
    assert (found.name, found.claim) == ("sign", "dz3 @ W3")
    found = _diagnose(net, "W2", "dz2.T @ a1 * (-1)")
    assert (found.name, found.claim) == ("sign", "-(dz2.T @ a1 * (-1))")
    result = symbp.verify(net, {"a2": "-dz3 @ W3"}).results[0]
    assert (result.verdict, result.diagnosis, result.expected) == ("fails", "sign", "dz3 @ W3")
    assert result.detail.startswith("without the sign of '-dz3' it holds for all sizes; at dL/da2[")


def test_a_transposed_operand_on_a_square_layer_is_untransposed_in_general():
    # W3 is 3 x 3 at [4, 5, 3, 3], so dz3 @ W3.T has the right shape there; in general only dz3 @ W3 fits
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    found = _diagnose(net, "a2", "dz3 @ W3.T")
    assert (found.name, found.claim, found.detail) == ("transposed", "dz3 @ W3",
                                                       "with W3 in place of W3.T it holds for all sizes")
    result = symbp.verify(net, {"a2": "dz3 @ W3.T"}).results[0]
    assert (result.verdict, result.diagnosis, result.expected) == ("fails", "transposed", "dz3 @ W3")
    whole = _diagnose(net, "W3", "a2.T @ dz3")
    assert (whole.name, whole.claim) == ("transposed", "(a2.T @ dz3).T")


def test_a_missing_sigmoid_derivative_is_the_rows_derivative():
    net = symbp.MLP([4, 5, 3, 3], hidden="sigmoid", batch=4)
    found = _diagnose(net, "z2", "da2")
    assert (found.name, found.claim) == ("missing-activation-derivative", "da2 * a2 * (1 - a2)")
    assert found.detail == "multiplied by a2 * (1 - a2) (f'(z2)) at 'da2' it holds for all sizes"
    result = symbp.verify(net, {"z1": "da1"}).results[0]
    assert (result.diagnosis, result.expected) == ("missing-activation-derivative", "da1 * a1 * (1 - a1)")
    extra = _diagnose(net, "a1", "(dz2 @ W2) * a1 * (1 - a1)")
    assert (extra.name, extra.claim) == ("extra-activation-derivative", "dz2 @ W2")


def test_a_claim_with_no_usual_mistake_gets_no_general_diagnosis():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    assert _diagnose(net, "W2", "dz2.T @ a1 + 1") is None
    result = symbp.verify(net, {"W2": "dz2.T @ a1 + 1"}).results[0]
    assert (result.verdict, result.diagnosis) == ("fails", "other")
    assert result.detail.startswith("no usual mistake explains it; at dL/dW2[1,1]: expected ")
    assert result.expected != "dz2.T @ a1"


def test_never_a_diagnosis_whose_corrected_claim_is_false(monkeypatch):
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    wrong = [("sign", "-(dz3.T @ a2) / N", "a wrong candidate", None),
             ("scaled", "dz3.T @ a2 / N / 2", "another wrong candidate", None)]
    assert not any(_proved(net, "W3", text) for _, text, _, _ in wrong)
    monkeypatch.setattr(allsizes, "_corrections", lambda *args: iter(wrong))
    assert _diagnose(net, "W3", "dz3.T @ a2 / N") is None
    result = symbp.verify(net, {"W3": "dz3.T @ a2 / N"}).results[0]  # the concrete diagnosis is kept
    assert (result.verdict, result.diagnosis, result.factor) == ("fails", "scaled", 4.0)
    assert result.detail.startswith("multiplied by 4 it holds (1/N applied twice)")
    right = ("scaled", "dz3.T @ a2", "the right one", None)
    monkeypatch.setattr(allsizes, "_corrections", lambda *args: iter(wrong + [right]))
    assert _diagnose(net, "W3", "dz3.T @ a2 / N").claim == "dz3.T @ a2"


def test_a_ratio_at_the_given_sizes_keeps_only_the_factors_of_that_value():
    net = symbp.MLP([4, 5, 3, 3], batch=4)
    world = allsizes.World(net)
    factors = [text for _, text in allsizes._size_factors(net, world, 0.25)]
    assert factors == ["1/N", "1/n0", "1/4"]  # N = n0 = 4, then the number itself
    assert all(float(f.xreplace({s: v for _, v, s in allsizes._size_list(net, world)})) == 0.25
               for f, _ in allsizes._size_factors(net, world, 0.25))
    assert list(allsizes._size_factors(net, world, 0)) == []
    assert _diagnose(net, "z3", "a3 - y", ratio=0) is None  # no factor of value 0: nothing scaled is tried
