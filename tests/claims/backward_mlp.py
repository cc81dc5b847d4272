"""A realistic NumPy backward pass for an MLP with ReLU hidden layers and softmax + cross-entropy,
over a batch (rows are examples, biases, mean over the batch), written as a student would: one
forward pass keeping the caches, then the layers in reverse. Used as a correct code claim at
realistic widths, and in float32."""

import numpy as np


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _forward(values, dtype):
    L = sum(1 for name in values if name.startswith("W"))
    W = {l: values[f"W{l}"].astype(dtype) for l in range(1, L + 1)}
    b = {l: values[f"b{l}"].astype(dtype) for l in range(1, L + 1)}
    a, cache = values["x"].astype(dtype), []
    for l in range(1, L + 1):
        z = a @ W[l].T + b[l].T
        cache.append((a, z))
        a = np.maximum(z, 0) if l < L else _softmax(z)
    return L, W, a, cache


def backward(values, dtype=np.float64):
    """dL/dW_l and dL/db_l, denominator layout (shaped like W_l and b_l)."""
    L, W, probs, cache = _forward(values, dtype)
    y = values["y"].astype(dtype)
    n = y.shape[0]
    # the general form of d(-sum y log softmax(z))/dz: a * sum(y) - y (a - y when rows of y sum to 1)
    delta = (probs * y.sum(axis=1, keepdims=True) - y) / n
    return _layers(L, W, cache, delta)


def _layers(L, W, cache, delta):
    """dL/dW_l, dL/db_l for l = L..1 from the output layer's delta (ReLU hidden layers)."""
    grads = {}
    for l in range(L, 0, -1):
        a_prev, _ = cache[l - 1]
        grads[f"W{l}"] = delta.T @ a_prev
        grads[f"b{l}"] = delta.sum(axis=0, keepdims=True).T
        if l > 1:
            _, z_prev = cache[l - 2]
            delta = (delta @ W[l]) * (z_prev > 0)
    return grads


def backward_float32(values):
    """The same computation in single precision."""
    return backward(values, np.float32)


def backward_unit_rows(values):
    """The textbook delta = (a - y) / N: right only when every target row sums to 1."""
    L, W, probs, cache = _forward(values, np.float64)
    y = values["y"]
    delta = (probs - y) / y.shape[0]
    return _layers(L, W, cache, delta)


def backward_complex(values):
    """Correct numbers, returned as complex arrays."""
    return {k: v.astype(complex) for k, v in backward(values).items()}
