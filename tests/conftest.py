import numpy as np
import pytest

import symbp


def configurations():
    """Small networks covering every registry row, single and batch, bias on/off, 1 to 4 layers."""
    from symbp.registry import ACTIVATIONS

    configs = []
    for name in ACTIVATIONS:
        configs.append(dict(sizes=[2, 3, 2], hidden=name, output="softmax", loss="cross_entropy"))
    configs += [
        dict(sizes=[3, 2], output="identity", loss="mse"),
        dict(sizes=[2, 2], output="sigmoid", loss="binary_cross_entropy", batch=3),
        dict(sizes=[2, 2], output="sigmoid", loss="cross_entropy"),
        dict(sizes=[2, 3], output="softmax", loss="binary_cross_entropy"),
        dict(sizes=[2, 3], output="softmax", loss="mse", batch=2, reduction="sum"),
        dict(sizes=[2, 2, 2], hidden="tanh", output="identity", loss="mse", bias=False),
        dict(sizes=[2, 2, 2], hidden="relu", output="softmax", loss="cross_entropy", batch=2),
        dict(sizes=[2, 2, 2, 2], hidden=["sigmoid", "relu"], output="sigmoid", loss="binary_cross_entropy"),
        dict(sizes=[2, 2, 2, 2, 2], hidden="tanh", output="softmax", loss="cross_entropy", bias=False),
        dict(sizes=[2, 2, 2], hidden="x*sigmoid(x)", output="identity", loss="mse", batch=2),
        dict(sizes=[2, 2, 2, 2], hidden="tanh", output="softmax", loss="cross_entropy", residual=True),
    ]
    return configs


def config_id(config):
    parts = ["-".join(map(str, config["sizes"]))]
    parts += [str(v) for k, v in config.items() if k != "sizes"]
    return ",".join(parts).replace(" ", "")


def make(config):
    config = dict(config)
    return symbp.MLP(config.pop("sizes"), **config)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
