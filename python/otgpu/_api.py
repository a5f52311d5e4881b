"""The public functions of the otgpu package, mirroring the C++ API.

Arrays: any object with ``__dlpack__`` (NumPy, torch, JAX, CuPy) or the buffer
protocol, float32 or float64, in host or CUDA memory, any non-negative strides; they
are read in place. Outputs come back as the caller's kind of array on the caller's
device (NumPy for NumPy and other inputs), in the dtype of ``x`` (or ``cost``).
Rank-2 point clouds ``[n, d]`` are one problem and give unbatched outputs; rank 3
``[B, n, d]`` is a batch. Options are keyword arguments named as the fields of the C++
option structs, with the same defaults (see :func:`sinkhorn_defaults`).
"""

from . import _otgpu as _native
from ._arrays import converter, prepare, resolve_stream, to_host

cuda_available = _native.cuda_available
clear_contexts = _native.clear_contexts


def sinkhorn_defaults():
    """The defaults of the Sinkhorn options (otgpu::SinkhornOptions; None = automatic)."""
    return _native.sinkhorn_defaults()


class SinkhornResult:
    """Potentials and per-problem reports of one (batched) Sinkhorn solve.

    ``f`` ``[B, n]`` and ``g`` ``[B, m]`` (``[n]``, ``[m]`` unbatched) come in the
    caller's kind of array and dtype; :meth:`numpy` gives them in float64 as the
    library computed them. ``reports`` is a list of B dicts (eps, ot_eps,
    transport_cost, marginal_error, residual, iterations, converged, acceleration,
    omega); the same fields are attributes over the batch (a float/int/bool
    unbatched, a NumPy array batched). Pass the result to :func:`barycentric_map`,
    :func:`gradient` or :func:`sample_partners` with the same arrays: on the CUDA
    backend they reuse the solve's device state.
    """

    __slots__ = ("_native", "_convert", "_f", "_g")

    def __init__(self, native, convert):
        self._native = native
        self._convert = convert
        self._f = None
        self._g = None

    @property
    def f(self):
        if self._f is None:
            self._f = self._convert(self._native.f())
        return self._f

    @property
    def g(self):
        if self._g is None:
            self._g = self._convert(self._native.g())
        return self._g

    def numpy(self):
        """(f, g) as float64 NumPy arrays (the library's values, unrounded)."""
        return self._native.f(True), self._native.g(True)

    @property
    def reports(self):
        return self._native.reports()

    def _column(self, name, kind):
        col = self._native.column(name)
        if self._native.batched:
            return col.astype(kind) if kind is not float else col
        return kind(col[0])

    eps = property(lambda self: self._column("eps", float))
    ot_eps = property(lambda self: self._column("ot_eps", float))
    transport_cost = property(lambda self: self._column("transport_cost", float))
    marginal_error = property(lambda self: self._column("marginal_error", float))
    residual = property(lambda self: self._column("residual", float))
    iterations = property(lambda self: self._column("iterations", int))
    converged = property(lambda self: self._column("converged", bool))
    omega = property(lambda self: self._column("omega", float))
    backend = property(lambda self: self._native.backend)
    device = property(lambda self: self._native.device)
    tol = property(lambda self: self._native.tol)
    time_ms = property(lambda self: self._native.time_ms)
    cancelled = property(lambda self: self._native.cancelled)
    batch = property(lambda self: self._native.batch)
    n = property(lambda self: self._native.n)
    m = property(lambda self: self._native.m)

    def release_state(self):
        """Frees the device state a CUDA solve keeps for the derived outputs."""
        self._native.release_state()

    def __repr__(self):
        return (f"SinkhornResult(backend={self.backend!r}, batch={self.batch}, n={self.n}, "
                f"m={self.m}, ot_eps={self.ot_eps}, converged={self.converged}, "
                f"iterations={self.iterations})")


def _host_options(options):
    for key in ("f_init", "g_init"):
        if key in options:
            options[key] = to_host(options[key])
    return options


def sinkhorn(x=None, y=None, *, cost=None, a=None, b=None, stream=None, **options):
    """Entropic OT by log-domain Sinkhorn (otgpu::sinkhorn), batched.

    Point clouds ``x [B, n, d]``, ``y [B, m, d]`` (or ``[n, d]``, ``[m, d]``) with
    ``cost_kind`` "sqeuclidean" (default) or "euclidean", or a cost matrix
    ``cost=[B, n, m]``. Weights ``a [n]``/``[B, n]``, ``b [m]``/``[B, m]``, uniform
    when absent. Options (C++ names and defaults): eps=0.01, eps_relative=False,
    tol=None (automatic: 1e-6 CPU, 1e-4 CUDA), max_iter=100000, check_every=10,
    eps_init=None (automatic), eps_decay=0.5, rho_a=rho_b=inf (balanced), f_init,
    g_init (warm start, [B*n] and [B*m] values), acceleration="overrelax",
    progress=None (a callable given a dict at each check; returning False cancels),
    backend="auto", device=None, cpu_threads=0. ``stream``: see the module docs.
    Returns a :class:`SinkhornResult`.
    """
    like = x if x is not None else cost
    handle = resolve_stream(stream, like)
    if "f_init" in options or "g_init" in options:
        _host_options(options)
    native = _native.sinkhorn(prepare(x), prepare(y), prepare(cost), prepare(a), prepare(b),
                              handle, **options)
    return SinkhornResult(native, converter(like))


def _solve_if_needed(fn, x, y, result, a, b, cost_kind, stream, options, cost=None):
    if result is None:
        return sinkhorn(x, y, cost=cost, a=a, b=b, cost_kind=cost_kind, stream=stream,
                        **options)
    if options:
        raise TypeError(f"{fn}: solve options ({', '.join(sorted(options))}) are only "
                        "accepted without a result")
    if not isinstance(result, SinkhornResult):
        raise TypeError(f"{fn}: result must be a SinkhornResult, got {type(result).__name__}")
    return result


def barycentric_map(x, y, result=None, *, a=None, b=None, cost_kind="sqeuclidean",
                    stream=None, **options):
    """T(x_i) = sum_j P_ij y_j / sum_j P_ij, ``[B, n, d]``, from ``result`` (a solve of the
    same problem) or from a solve with ``options`` when it is None."""
    result = _solve_if_needed("barycentric_map", x, y, result, a, b, cost_kind, stream,
                              options)
    handle = resolve_stream(stream, x)
    out = _native.barycentric_map(prepare(x), prepare(y), prepare(a), prepare(b),
                                  result._native, handle, cost_kind)
    return converter(x)(out)


def gradient(x, y, result=None, *, wrt="x", a=None, b=None, cost_kind="sqeuclidean",
             stream=None, **options):
    """Gradient of OT_eps at fixed potentials (otgpu::gradient_x), ``[B, n, d]``:
    sum_j P_ij grad_x c(x_i, y_j); ``wrt="y"`` gives sum_i P_ij grad_y c(x_i, y_j),
    ``[B, m, d]`` (gradient_x of the problem seen from y). At convergence it is the
    gradient of OT_eps with respect to the points (envelope theorem)."""
    result = _solve_if_needed("gradient", x, y, result, a, b, cost_kind, stream, options)
    like = x if wrt == "x" else y
    handle = resolve_stream(stream, like)
    out = _native.gradient(prepare(x), prepare(y), prepare(a), prepare(b), result._native,
                           handle, cost_kind, wrt)
    return converter(like)(out)


def gradient_x(x, y, result=None, **kwargs):
    """:func:`gradient` with respect to x (the C++ name)."""
    return gradient(x, y, result, wrt="x", **kwargs)


def sample_partners(x=None, y=None, result=None, *, cost=None, a=None, b=None, seed=0,
                    cost_kind="sqeuclidean", stream=None, **options):
    """One partner j per row i drawn from P_i. / sum_j P_ij (Gumbel-max, Philox keyed by
    (seed, problem, i, j): reproducible across backends and thread counts), int64
    ``[B, n]``."""
    like = x if x is not None else cost
    result = _solve_if_needed("sample_partners", x, y, result, a, b, cost_kind, stream,
                              options, cost=cost)
    handle = resolve_stream(stream, like)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"sample_partners: seed must be a non-negative int, got {seed!r}")
    out = _native.sample_partners(prepare(x), prepare(y), prepare(cost), prepare(a),
                                  prepare(b), result._native, seed, handle,
                                  cost_kind if cost is None else "matrix")
    return converter(like)(out)


def sinkhorn_divergence(x, y, *, a=None, b=None, result=None, stream=None, **options):
    """Debiased Sinkhorn divergence S_eps = OT_eps(a,b) - OT_eps(a,a)/2 - OT_eps(b,b)/2
    per problem (a float unbatched, ``[B]`` batched). ``result``: an existing (x, y)
    solve with the same options (only the two self terms are then solved)."""
    handle = resolve_stream(stream, x)
    if result is not None and not isinstance(result, SinkhornResult):
        raise TypeError("sinkhorn_divergence: result must be a SinkhornResult, got "
                        f"{type(result).__name__}")
    out = _native.sinkhorn_divergence(prepare(x), prepare(y), prepare(a), prepare(b),
                                      None if result is None else result._native, handle,
                                      **options)
    return out if isinstance(out, float) else converter(x)(out)


class SlicedResult:
    """sliced_wasserstein's outputs: ``value`` (SW_p, or max-sliced), ``value_pp``
    (SW_p^p), ``per_direction`` (W_p^p per direction), ``grad_x``/``grad_y`` (of SW_p^p,
    when gradients=True, caller's kind of array), ``backend``, ``time_ms``."""

    __slots__ = ("value", "value_pp", "per_direction", "grad_x", "grad_y", "backend",
                 "time_ms")

    def __init__(self, d, convert):
        for key in self.__slots__:
            setattr(self, key, d[key])
        if self.grad_x is not None:
            self.grad_x = convert(self.grad_x)
            self.grad_y = convert(self.grad_y)

    def __repr__(self):
        return f"SlicedResult(value={self.value}, backend={self.backend!r})"


def sliced_wasserstein(x, y, *, a=None, b=None, stream=None, **options):
    """Sliced Wasserstein SW_p over L random directions (otgpu::sliced_wasserstein).
    Options: projections=64, p=2.0, seed=0, directions=None ([d, L]), max_sliced=False,
    backend="auto", device=None, gradients=False, cpu_threads=0."""
    handle = resolve_stream(stream, x)
    if "directions" in options:
        options["directions"] = prepare(options["directions"])
    d = _native.sliced_wasserstein(prepare(x), prepare(y), prepare(a), prepare(b), handle,
                                   **options)
    return SlicedResult(d, converter(x))


def wasserstein_1d(x, y, a=None, b=None, *, p=1.0, backend="auto", device=None,
                   stream=None):
    """Exact W_p^p in 1-D (POT's ot.wasserstein_1d value): x ``[n]`` or ``[B, n]``; a float
    unbatched, ``[B]`` batched. Both measures are normalised to probabilities."""
    handle = resolve_stream(stream, x)
    out = _native.wasserstein_1d(prepare(x), prepare(y), prepare(a), prepare(b), p, backend,
                                 -1 if device is None else device, handle)
    return out if isinstance(out, float) else converter(x)(out)


def monotone_coupling_1d(x, y, a=None, b=None, *, p=1.0):
    """The optimal 1-D coupling per problem: a list of (i, j, mass, cost) with NumPy
    arrays i, j (int64) and mass (float64), for the normalised measures (host only)."""
    return _native.monotone_coupling_1d(prepare(x), prepare(y), prepare(a), prepare(b), p)


def sliced_directions(d, projections, seed=0):
    """The unit directions sliced_wasserstein draws for (d, seed), ``[d, L]``."""
    return _native.sliced_directions(d, projections, seed)


class GaussianOTResult:
    """gaussian_ot's outputs: ``w2_squared``, ``bures_squared``, ``entropic`` (None when
    eps = 0), ``map_matrix`` (A of the Monge map T(x) = m2 + A (x - m1), when
    want_map), ``backend``, ``time_ms``; floats unbatched, NumPy arrays batched."""

    __slots__ = ("w2_squared", "bures_squared", "entropic", "map_matrix", "backend",
                 "time_ms")

    def __init__(self, d):
        for key in self.__slots__:
            setattr(self, key, d[key])

    def __repr__(self):
        return f"GaussianOTResult(w2_squared={self.w2_squared}, backend={self.backend!r})"


def gaussian_ot(mean1, cov1, mean2, cov2, *, eps=0.0, want_map=False, backend="auto",
                device=None, stream=None):
    """Closed-form OT between N(mean1, cov1) and N(mean2, cov2) (otgpu::gaussian_ot):
    means ``[d]``/``[B, d]``, covariances ``[d, d]``/``[B, d, d]`` (an unbatched one is
    shared by the batch). eps > 0 adds the entropic value."""
    handle = resolve_stream(stream, mean1)
    d = _native.gaussian_ot(prepare(mean1), prepare(cov1), prepare(mean2), prepare(cov2),
                            float(eps), bool(want_map), backend,
                            -1 if device is None else device, handle)
    return GaussianOTResult(d)
