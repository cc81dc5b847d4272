"""Backward passes in the shape of seed 002's pseudo-code (rows are examples, no biases, ReLU hidden
layers, softmax + cross-entropy, mean over the batch): one correct, and one per usual mistake."""

import numpy as np


def d_relu(z):
    return (z > 0).astype(float)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward_pass(values):
    L = sum(1 for k in values if k.startswith("W"))
    A, Z = [values["x"]], []
    for l in range(1, L + 1):
        z = A[-1] @ values[f"W{l}"].T
        Z.append(z)
        A.append(np.maximum(z, 0) if l < L else softmax(z))
    return L, A, Z


def backward(values, *, mask=True):
    L, A, Z = forward_pass(values)
    Y = values["y"]
    delta = (A[L] - Y) / Y.shape[0]
    W_g = {}
    for l in range(L, 0, -1):
        W_g[f"W{l}"] = delta.T @ A[l - 1]
        if l > 1:
            delta = delta @ values[f"W{l}"]
            if mask:
                delta = delta * d_relu(Z[l - 2])
    return W_g


def backward_no_mean(values):
    return {k: v * values["y"].shape[0] for k, v in backward(values).items()}


def backward_transposed(values):
    return {k: v.T for k, v in backward(values).items()}


def backward_sign(values):
    return {k: -v for k, v in backward(values).items()}


def backward_no_mask(values):
    return backward(values, mask=False)


def backward_missing(values):
    grads = backward(values)
    del grads["W1"]
    return grads


def backward_unknown_name(values):
    return dict(backward(values), W9=np.zeros((2, 2)))


def backward_crash(values):
    return values["b1"]


def backward_bad_shape(values):
    grads = backward(values)
    grads["W2"] = grads["W2"][:1]
    return grads


def backward_not_a_dict(values):
    return [1, 2, 3]
