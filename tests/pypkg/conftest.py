"""Shared fixtures of the otgpu package tests (pytest).

The oracles are independent of libotgpu: POT and NumPy closed forms. GPU tests are
marked `gpu` and skip unless the build has CUDA, a device is usable and torch (with
CUDA) is importable; CI has no GPU and no torch.
"""

import importlib.util

import numpy as np
import pytest

import otgpu


def torch_cuda():
    """The torch module when it is installed and sees a CUDA device, else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    return torch if torch.cuda.is_available() else None


def pytest_collection_modifyitems(config, items):
    if otgpu.cuda_available() and torch_cuda() is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA build, a CUDA device and torch with CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(20261129)


def sqdist(x, y):
    return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)


def plan(f, g, C, a, b, eps):
    """P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps): the library's convention."""
    return (a[:, None] * b[None, :]) * np.exp((f[:, None] + g[None, :] - C) / eps)


def ot_eps_of_plan(P, C, a, b, eps):
    """Primal value <P, C> + eps KL(P | a (x) b), generalised KL (as in docs/design.md)."""
    ab = a[:, None] * b[None, :]
    mask = P > 0
    kl = np.sum(P[mask] * np.log(P[mask] / ab[mask])) - P.sum() + ab.sum()
    return float(np.sum(P * C) + eps * kl)
