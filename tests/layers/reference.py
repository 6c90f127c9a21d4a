"""NumPy re-implementations of the expert-family layers, written from the papers'
equations, used as references by the layer tests."""

import keras
import numpy as np


def relu(x):
    return np.maximum(x, 0.0)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS = {"relu": relu, "tanh": np.tanh, "linear": lambda v: v}


def dense(layer, x):
    """A user-supplied `keras.layers.Dense` expert."""
    h = np.asarray(x, "float64") @ np.asarray(layer.kernel, "float64")
    if layer.use_bias:
        h = h + np.asarray(layer.bias, "float64")
    return ACTIVATIONS[keras.activations.serialize(layer.activation)](h)


def conv2d_same(layer, x):
    """A user-supplied stride-1 `keras.layers.Conv2D` expert with "same" padding."""
    kernel = np.asarray(layer.kernel, "float64")  # (kh, kw, c_in, c_out)
    kh, kw = kernel.shape[:2]
    x = np.asarray(x, "float64")
    padded = np.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i : i + x.shape[1], j : j + x.shape[2]]
            out += np.einsum("bhwc,co->bhwo", window, kernel[i, j])
    out = out + np.asarray(layer.bias, "float64")
    return ACTIVATIONS[keras.activations.serialize(layer.activation)](out)


def expert_bank(bank, x, activation=relu):
    """(B, ..., d) -> (B, ..., E, h), one expert at a time: the bank's stacked
    kernels, or its clones of a user Dense or Conv2D expert."""
    if bank.experts:
        one = conv2d_same if isinstance(bank.experts[0], keras.layers.Conv2D) else dense
        return np.stack([one(e, x) for e in bank.experts], axis=-2)
    kernels = [np.asarray(k, "float64") for k in bank.kernels]
    biases = [np.asarray(b, "float64") for b in bank.biases]
    outputs = []
    for e in range(bank.num_experts):
        h = np.asarray(x, "float64")
        for i, k in enumerate(kernels):
            h = h @ k[:, e] + (biases[i][e] if biases else 0.0)
            h = activation(h)
        outputs.append(h)
    return np.stack(outputs, axis=-2)


def gate(layer, x):
    """Softmax gate weights (B, E), or a DSelect-k gate's weights."""
    if hasattr(layer, "z_dense"):
        return dselect_k(layer, x)[0]
    kernel = np.asarray(layer.dense.kernel, "float64")
    logits = np.asarray(x, "float64") @ kernel
    if layer.use_bias:
        logits = logits + np.asarray(layer.dense.bias, "float64")
    return softmax(logits / layer.temperature)


def mix(w, experts):
    return np.einsum("be,beh->bh", w, experts)


def smooth_step(x, gamma):
    x = np.asarray(x, "float64")
    cubic = -2.0 / gamma**3 * x**3 + 3.0 / (2.0 * gamma) * x + 0.5
    return np.where(x <= -gamma / 2, 0.0, np.where(x >= gamma / 2, 1.0, cubic))


def dselect_k(layer, x):
    """Weights (B, E) and selector outputs (B, k, E) by brute force over the codes."""
    x = np.asarray(x, "float64")
    if layer.num_binary:
        z = x @ np.asarray(layer.z_dense.kernel, "float64") + np.asarray(layer.z_dense.bias)
    else:  # one expert: no code bits
        z = np.zeros((len(x), layer.k * layer.num_binary))
    z = z.reshape(len(x), layer.k, layer.num_binary)
    a = softmax(x @ np.asarray(layer.w_dense.kernel, "float64") + np.asarray(layer.w_dense.bias))
    s = smooth_step(z, layer.gamma)
    selectors = np.ones((len(x), layer.k, layer.num_experts))
    for j in range(layer.num_experts):
        bits = [int(c) for c in format(j, f"0{layer.num_binary}b")] if layer.num_binary else []
        for bit_index, bit in enumerate(bits):
            factor = s[:, :, bit_index] if bit else 1.0 - s[:, :, bit_index]
            selectors[:, :, j] *= factor
    weights = np.einsum("bk,bke->be", a, selectors)
    return weights, selectors


def cgc(layer, task_inputs, shared_input):
    """Task outputs, and the shared output if the layer has a shared gate."""
    shared = expert_bank(layer.shared_experts, shared_input)
    own = [expert_bank(b, x) for b, x in zip(layer.task_experts, task_inputs, strict=True)]
    outputs = [
        mix(gate(g, x), np.concatenate([own[t], shared], axis=-2))
        for t, (g, x) in enumerate(zip(layer.gates, task_inputs, strict=True))
    ]
    if layer.shared_gate is not None:
        outputs.append(
            mix(gate(layer.shared_gate, shared_input), np.concatenate([*own, shared], -2))
        )
    return outputs
