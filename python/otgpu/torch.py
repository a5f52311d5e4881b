"""Differentiable Sinkhorn losses for PyTorch (``import otgpu.torch``; needs torch).

The backward pass uses the analytic gradient at the potentials (envelope theorem):
at the optimum of the entropic problem,

    d OT_eps / d x_i = sum_j P_ij grad_x c(x_i, y_j)      (otgpu.gradient, wrt="x")
    d OT_eps / d y_j = sum_i P_ij grad_y c(x_i, y_j)      (otgpu.gradient, wrt="y")

with P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps): no iteration is differentiated
through, and the backward pass is one pass over the pairs per term. It is exact at
convergence (ask for a tol suited to the gradients you need). The weights a, b are
constants (no gradient flows to them). Tensors may be on the CPU or a CUDA device;
CUDA tensors are read in place on the current torch stream (or ``stream=``); for
sinkhorn_loss on CUDA tensors the forward and backward passes are stream-ordered (no
host sync: the loss and its gradients stay on the device; docs/python.md). The
mathematics is otgpu._losses.LossTerms, shared with NumPy users (otgpu.loss_terms).
"""

import torch

from ._losses import LossTerms


def _scale(grad_out, g):
    # grad_out is [] (one problem) or [B]; g is [n, d] or [B, n, d].
    return g * (grad_out if grad_out.dim() == 0 else grad_out.reshape(-1, 1, 1))


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, a, b, debiased, options):
        terms = LossTerms(x, y, a, b, debiased, **options)
        ctx.terms = terms
        ctx.dtypes = (x.dtype, y.dtype)
        return torch.as_tensor(terms.value, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_out):
        terms = ctx.terms
        # The stream-ordered CUDA path gives float32 gradients: cast to the inputs' dtype.
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = _scale(grad_out, terms.grad_x()).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gy = _scale(grad_out, terms.grad_y()).to(ctx.dtypes[1])
        return gx, gy, None, None, None, None


def sinkhorn_loss(x, y, a=None, b=None, **options):
    """OT_eps(x, y) per problem (a 0-d tensor for [n, d] clouds, [B] for a batch): the
    entropic value of otgpu.sinkhorn, differentiable in x and y. ``options`` are those
    of :func:`otgpu.sinkhorn` (eps, eps_relative, tol, max_iter, rho_a, rho_b, backend,
    stream, cost_kind...)."""
    return _Loss.apply(x, y, a, b, False, dict(options))


def sinkhorn_divergence(x, y, a=None, b=None, **options):
    """Debiased S_eps(x, y) = OT_eps(x, y) - OT_eps(x, x)/2 - OT_eps(y, y)/2 per problem,
    differentiable in x and y; options as :func:`sinkhorn_loss`. The self terms are
    solved with the absolute eps of the (x, y) solve (plain alternating Sinkhorn, so that
    their potentials are there for the backward pass)."""
    return _Loss.apply(x, y, a, b, True, dict(options))


__all__ = ["sinkhorn_loss", "sinkhorn_divergence"]
