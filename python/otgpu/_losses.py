"""Sinkhorn losses with their analytic gradients, for any array kind.

The gradient of OT_eps at the optimum is the gradient of the cost under the plan
(envelope theorem): d OT_eps / d x_i = sum_j P_ij grad_x c(x_i, y_j), which
otgpu.gradient computes without forming P. For the debiased divergence

    S_eps(x, y) = OT_eps(x, y) - OT_eps(x, x) / 2 - OT_eps(y, y) / 2

both arguments of a self term move with x, so d OT_eps(x, x) / d x is the sum of the
two one-sided gradients. The self terms use the absolute eps of the (x, y) solve,
per problem, as the library's sinkhorn_divergence does. This module is the
mathematics shared by otgpu.torch (autograd) and NumPy users (otgpu.loss_terms).
"""

import sys

import numpy as np

from . import _api
from ._arrays import framework


def _stack(parts, like):
    if framework(like) == "torch":
        return sys.modules["torch"].stack(parts)
    return np.stack(parts)


def _row(w, k):
    if w is None:
        return None
    return w[k] if w.ndim == 2 else w


class LossTerms:
    """The solves behind OT_eps(x, y) (``debiased=False``) or S_eps(x, y)
    (``debiased=True``): ``value`` (float64: a float for [n, d] clouds, [B] for a batch)
    and the gradients on demand, in the caller's kind of array and dtype. For torch
    CUDA / CuPy arrays and ``debiased=False`` the solve is stream-ordered: ``value`` is
    then a float64 device array (0-d or [B]) and the gradients float32 device arrays,
    all queued on the stream without a host sync (``sync=True`` asks for the
    synchronous path)."""

    def __init__(self, x, y, a=None, b=None, debiased=False, **options):
        self._x, self._y, self._a, self._b = x, y, a, b
        self._kw = dict(cost_kind=options.get("cost_kind", "sqeuclidean"),
                        stream=options.get("stream"))
        # The (x, y) solve takes the stream-ordered path for torch CUDA / CuPy arrays:
        # value and gradients then stay on the device, queued without a host sync. The
        # divergence needs the absolute eps of each problem on the host for its self
        # terms, so it solves synchronously.
        sync = bool(options.pop("sync", False)) or debiased
        self.xy = _api.sinkhorn(x, y, a=a, b=b, sync=sync, **options)
        value = self.xy.ot_eps
        self.xx = self.yy = None
        if debiased:
            eps = self.xy.eps
            if not isinstance(eps, float) and len(set(eps.tolist())) == 1:
                eps = float(eps[0])
            self.xx = self._self_solves(x, a, eps, options)
            self.yy = self._self_solves(y, b, eps, options)
            if isinstance(eps, float):
                value = value - 0.5 * (self.xx[0][0].ot_eps + self.yy[0][0].ot_eps)
            else:
                value = np.array(value, dtype=np.float64)
                for (rx, k), (ry, _) in zip(self.xx, self.yy):
                    value[k] -= 0.5 * (rx.ot_eps + ry.ot_eps)
        self.value = value

    @staticmethod
    def _self_solves(p, w, eps, options):
        opts = dict(options)
        opts["eps_relative"] = False
        opts["sync"] = True
        opts.pop("f_init", None)
        opts.pop("g_init", None)
        if isinstance(eps, float):
            opts["eps"] = eps
            return [(_api.sinkhorn(p, p, a=w, b=w, **opts), None)]
        out = []
        for k, e in enumerate(eps):
            opts["eps"] = float(e)
            wk = _row(w, k)
            out.append((_api.sinkhorn(p[k], p[k], a=wk, b=wk, **opts), k))
        return out

    def _self_gradient(self, p, w, solves):
        parts = []
        for r, k in solves:
            pk = p if k is None else p[k]
            wk = w if k is None else _row(w, k)
            parts.append(_api.gradient(pk, pk, r, wrt="x", a=wk, b=wk, **self._kw)
                         + _api.gradient(pk, pk, r, wrt="y", a=wk, b=wk, **self._kw))
        return parts[0] if solves[0][1] is None else _stack(parts, p)

    def grad_x(self):
        g = _api.gradient(self._x, self._y, self.xy, wrt="x", a=self._a, b=self._b,
                          **self._kw)
        if self.xx is not None:
            g = g - 0.5 * self._self_gradient(self._x, self._a, self.xx)
        return g

    def grad_y(self):
        g = _api.gradient(self._x, self._y, self.xy, wrt="y", a=self._a, b=self._b,
                          **self._kw)
        if self.yy is not None:
            g = g - 0.5 * self._self_gradient(self._y, self._b, self.yy)
        return g


def loss_terms(x, y, a=None, b=None, debiased=False, **options):
    """OT_eps(x, y), or the debiased S_eps(x, y), with its gradients: see LossTerms."""
    return LossTerms(x, y, a, b, debiased, **options)
