"""Small networks exercising every op of the table, one or more per op (shared by the op x facet tests).

Every row of :data:`symbp.ops.OPS` appears in at least one network (``test_ops.py`` checks it), and an
entry-wise activation gets one by being a row: :func:`configs` builds one network per activation of the
registry, so a row added there is tested by every facet without a line here.
"""

from __future__ import annotations

import symbp
from symbp.layers import network
from symbp.registry import ACTIVATIONS


def configs() -> dict:
    """{id: (op under test, keyword arguments of symbp.layers.network)}."""
    out = {}
    for name in ACTIVATIONS:
        out[name] = (name, dict(layers=[{"op": "affine", "out": 2}, {"op": name}, {"op": "affine", "out": 2}],
                                input=2, loss="mse"))
    out["activation"] = ("activation", dict(
        layers=[{"op": "affine", "out": 2}, {"op": "activation", "expr": "x*tanh(x)"}, {"op": "affine", "out": 2}],
        input=2, batch=2, loss="mse"))
    out["affine"] = ("affine", dict(layers=[{"op": "affine", "out": 2}, {"op": "softmax"}], input=3,
                                    batch=2, loss="cross_entropy"))
    out["softmax"] = ("softmax", dict(layers=[{"op": "affine", "out": 3}, {"op": "softmax"}], input=2,
                                      batch=2, loss="mse"))
    out["layernorm"] = ("layernorm", dict(
        layers=[{"op": "affine", "out": 3}, {"op": "layernorm"}, {"op": "affine", "out": 2}],
        input=2, batch=2, loss="mse"))
    out["layernorm-single"] = ("layernorm", dict(
        layers=[{"op": "affine", "out": 3}, {"op": "layernorm", "affine": False}, {"op": "tanh"},
                {"op": "affine", "out": 2}, {"op": "softmax"}], input=2, loss="cross_entropy"))
    out["rmsnorm"] = ("rmsnorm", dict(
        layers=[{"op": "affine", "out": 3}, {"op": "rmsnorm"}, {"op": "affine", "out": 2}], input=2, loss="mse"))
    out["batchnorm"] = ("batchnorm", dict(
        layers=[{"op": "affine", "out": 2}, {"op": "batchnorm"}, {"op": "relu"}, {"op": "affine", "out": 2}],
        input=2, batch=3, loss="mse"))
    out["dropout"] = ("dropout", dict(
        layers=[{"op": "affine", "out": 3}, {"op": "dropout", "mask": "m1", "p": 0.25}, {"op": "affine", "out": 2}],
        input=2, batch=2, loss="mse"))
    out["add"] = ("add", dict(
        layers=[{"op": "affine", "out": 2, "name": "h"}, {"op": "tanh"}, {"op": "add", "from": "h"},
                {"op": "affine", "out": 2}], input=2, loss="mse"))
    out["attention"] = ("attention", dict(
        layers=[{"op": "attention", "dk": 2}, {"op": "affine", "out": 2}], input=2, batch=2, loss="mse"))
    out["attention-causal"] = ("attention", dict(
        layers=[{"op": "attention", "dk": 2, "causal": True}, {"op": "affine", "out": 2}], input=2, batch=3,
        loss="mse"))
    out["custom-loss"] = ("loss", dict(
        layers=[{"op": "affine", "out": 2}, {"op": "sigmoid"}], input=2, batch=2, loss="log(cosh(a - y))"))
    return out


def make(config_id: str) -> symbp.layers.Network:
    return network(**configs()[config_id][1])
