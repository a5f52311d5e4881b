"""The public functions of the otgpu package, mirroring the C++ API.

Arrays: any object with ``__dlpack__`` (NumPy, torch, JAX, CuPy) or the buffer
protocol, float32 or float64, in host or CUDA memory, any non-negative strides; they
are read in place. Outputs come back as the caller's kind of array on the caller's
device (NumPy for NumPy and other inputs), in the dtype of ``x`` (or ``cost``).
Rank-2 point clouds ``[n, d]`` are one problem and give unbatched outputs; rank 3
``[B, n, d]`` is a batch. Options are keyword arguments named as the fields of the C++
option structs, with the same defaults (see :func:`sinkhorn_defaults`).
"""

import sys

from . import _device
from . import _otgpu as _native
from ._errors import InvalidArgument
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
    #: The arithmetic that ran: "fp64" (CPU), "fp32" (CUDA SIMT or 3xTF32), "tf32", "bf16".
    precision = property(lambda self: self._native.precision)
    #: True when the CUDA online half-steps ran on tensor cores (mma.sync).
    tensor_cores = property(lambda self: self._native.tensor_cores)
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


def sinkhorn(x=None, y=None, *, cost=None, a=None, b=None, stream=None, sync=False,
             **options):
    """Entropic OT by log-domain Sinkhorn (otgpu::sinkhorn), batched.

    Point clouds ``x [B, n, d]``, ``y [B, m, d]`` (or ``[n, d]``, ``[m, d]``) with
    ``cost_kind`` "sqeuclidean" (default) or "euclidean", or a cost matrix
    ``cost=[B, n, m]``. Weights ``a [n]``/``[B, n]``, ``b [m]``/``[B, m]``, uniform
    when absent. Options (C++ names and defaults): eps=0.01, eps_relative=False,
    tol=None (automatic: 1e-6 CPU, 1e-4 CUDA), max_iter=100000, check_every=10,
    eps_init=None (automatic), eps_decay=0.5, rho_a=rho_b=inf (balanced), f_init,
    g_init (warm start, [B*n] and [B*m] values), acceleration="overrelax",
    progress=None (a callable given a dict at each check; returning False cancels),
    backend="auto", device=None, cpu_threads=0, precision="fp32" (the CUDA tensor-core
    tile: "fp32" = 3xTF32, "tf32", "bf16"), devices=None (a list of CUDA ordinals: the
    rows of x split over them, one shard each, a repeated ordinal giving several shards
    on one device; host arrays only). ``stream``: see the module docs.

    torch CUDA tensors and CuPy arrays (every array of the call on the device, no
    ``progress``, backend not "cpu") take the stream-ordered path unless
    ``sync=True``: the call enqueues otgpu::sinkhorn_async and returns a
    :class:`DeviceSinkhornResult` at once. Otherwise it returns a
    :class:`SinkhornResult` when the solve is done.
    """
    like = x if x is not None else cost
    handle = resolve_stream(stream, like)
    if not sync and options.get("progress") is None and options.get("backend") != "cpu":
        fw = _device.async_framework((x, y, cost, a, b), _native)
        if fw is not None:
            sizes = _device.batch_sizes(x, y, cost)
            if sizes is not None:
                return _sinkhorn_async(x, y, cost, a, b, handle, fw, sizes, options)
    if "f_init" in options or "g_init" in options:
        _host_options(options)
    native = _native.sinkhorn(prepare(x), prepare(y), prepare(cost), prepare(a), prepare(b),
                              handle, **options)
    return SinkhornResult(native, converter(like))


# The CUDA default of tol (otgpu::kAuto on the CUDA backend), for the converged flag.
_CUDA_TOL = 1e-4


class DeviceSinkhornResult:
    """A Sinkhorn solve queued on the device by the stream-ordered path.

    Every field is an array of the caller's framework on the inputs' device, written
    by work queued on the call's stream (``stream``): reading one in the caller's
    framework on that stream is ordered after the solve; reading it on the host waits
    for it. ``f`` ``[B, n]`` and ``g`` ``[B, m]`` (``[n]``, ``[m]`` unbatched) are
    float32 (the CUDA solve's precision); ``ot_eps``, ``transport_cost``,
    ``marginal_error``, ``residual`` float64 and ``iterations`` int32, ``[B]`` (0-d
    unbatched); ``converged`` is ``isfinite(ot_eps) & (residual <= tol)``, the
    library's test, computed by the framework on the device. The absolute ``eps`` is
    not among the device outputs: it is ``options["eps"]`` unless eps_relative, else
    None. :attr:`reports`, :meth:`numpy` and :meth:`synchronize` wait for the stream.
    Pass the result to :func:`barycentric_map`, :func:`gradient` and
    :func:`sample_partners` with the same arrays: they run the *_async derived outputs
    from these potentials, queued behind the solve.
    """

    asynchronous = True
    backend = "cuda"
    cancelled = False

    def __init__(self, fw, device, handle, batched, problem, options, out):
        self._fw = fw
        self.device = device
        self.stream = handle
        self.batched = batched
        self._problem = problem  # the prepared (x, y, cost, a, b): alive while queued
        self._options = options
        self._out = out
        self.tol = options.get("tol") if options.get("tol") is not None else _CUDA_TOL
        self.batch, self.n, self.m = (int(s) for s in out["shape"])

    def _field(self, name):
        t = self._out[name]
        return t if self.batched else t[0]

    f = property(lambda self: self._out["f"])
    g = property(lambda self: self._out["g"])
    ot_eps = property(lambda self: self._field("ot_eps"))
    transport_cost = property(lambda self: self._field("transport_cost"))
    marginal_error = property(lambda self: self._field("marginal_error"))
    residual = property(lambda self: self._field("residual"))
    iterations = property(lambda self: self._field("iterations"))

    @property
    def converged(self):
        mod = sys.modules[self._fw]
        return mod.isfinite(self.ot_eps) & (self.residual <= self.tol)

    @property
    def eps(self):
        if self._options.get("eps_relative", False):
            return None
        return float(self._options.get("eps", 0.01))

    @property
    def reports(self):
        """The per-problem reports as dicts (reads the device: waits for the stream)."""
        cols = {k: _device.host_read(self._out[k], self._fw)
                for k in ("ot_eps", "transport_cost", "marginal_error", "residual",
                          "iterations")}
        out = []
        for p in range(self.batch):
            d = {k: (int(v[p]) if k == "iterations" else float(v[p])) for k, v in cols.items()}
            d["converged"] = bool(d["ot_eps"] == d["ot_eps"] and abs(d["ot_eps"]) != float("inf")
                                  and d["residual"] <= self.tol)
            d["eps"] = self.eps
            out.append(d)
        return out

    def numpy(self):
        """(f, g) as float64 NumPy arrays (host copies: waits for the stream)."""
        return (_device.host_read(self.f, self._fw).astype("float64"),
                _device.host_read(self.g, self._fw).astype("float64"))

    def synchronize(self):
        """Blocks until the work queued on the call's stream has finished."""
        _native._context_synchronize(self.device, self.stream)

    def __repr__(self):
        return (f"DeviceSinkhornResult({self._fw}, device={self.device}, batch={self.batch}, "
                f"n={self.n}, m={self.m}, stream={self.stream:#x})")


def _sinkhorn_async(x, y, cost, a, b, handle, fw, sizes, options):
    B, n, m, batched = sizes
    like = x if x is not None else cost
    alloc = _device.Allocator(like, fw, handle)
    f_init = options.pop("f_init", None)
    g_init = options.pop("g_init", None)
    problem = (prepare(x), prepare(y), prepare(cost), prepare(a), prepare(b))
    with alloc.on_stream():
        out = {"f": alloc.empty((B, n) if batched else (n,), _device.FLOAT32),
               "g": alloc.empty((B, m) if batched else (m,), _device.FLOAT32)}
        for key in ("ot_eps", "transport_cost", "marginal_error", "residual"):
            out[key] = alloc.empty((B,), _device.FLOAT64)
        out["iterations"] = alloc.empty((B,), _device.INT32)
        warm = f_init is not None or g_init is not None
        if warm:
            # Both potentials start from the given values (zeros for the one missing).
            for key, init in (("f", f_init), ("g", g_init)):
                if init is None:
                    out[key].fill(0) if fw == "cupy" else out[key].zero_()
                else:
                    alloc.fill_from(out[key], init)
    ptrs = [_device.data_ptr(out[k], fw) for k in ("f", "g", "ot_eps", "transport_cost",
                                                     "marginal_error", "residual",
                                                     "iterations")]
    device = _native._sinkhorn_async(*problem, handle, ptrs, warm, **options)
    out["shape"] = (B, n, m)
    return DeviceSinkhornResult(fw, device, handle, batched, problem, dict(options), out)


def _solve_if_needed(fn, x, y, result, a, b, cost_kind, stream, options, cost=None):
    if result is None:
        return sinkhorn(x, y, cost=cost, a=a, b=b, cost_kind=cost_kind, stream=stream,
                        **options)
    if options:
        raise TypeError(f"{fn}: solve options ({', '.join(sorted(options))}) are only "
                        "accepted without a result")
    if not isinstance(result, (SinkhornResult, DeviceSinkhornResult)):
        raise TypeError(f"{fn}: result must be a SinkhornResult, got {type(result).__name__}")
    return result


def _derived_async(what, x, y, cost, result, stream, seed, shape, dtype):
    """A derived output of a DeviceSinkhornResult, queued behind its solve on the
    result's stream, into a new framework array. With another ``stream`` the caller
    orders that stream after the solve's (e.g. torch's wait_stream)."""
    fw = result._fw
    px, py, pcost, pa, pb = result._problem
    arrays = (x, y) if cost is None else (cost,)
    if _device.async_framework(arrays, _native) != fw:
        raise InvalidArgument(f"{what}: a DeviceSinkhornResult needs the solve's {fw} CUDA "
                              "arrays (the same problem)")
    handle = result.stream if stream is None else resolve_stream(stream, x)
    like = x if x is not None else cost
    alloc = _device.Allocator(like, fw, handle)
    with alloc.on_stream():
        out = alloc.empty(shape, dtype)
    options = dict(result._options)
    _native._derived_async(what, prepare(x), prepare(y), prepare(cost), pa, pb, handle,
                           _device.data_ptr(result.f, fw), _device.data_ptr(result.g, fw),
                           seed, _device.data_ptr(out, fw), **options)
    return out


def _cloud_shape(result, p):
    """[B, k, d] (or [k, d] unbatched) for the clouds of a device result, k the rows of p."""
    s = tuple(p.shape)
    return (result.batch, s[-2], s[-1]) if result.batched else (s[-2], s[-1])


def barycentric_map(x, y, result=None, *, a=None, b=None, cost_kind="sqeuclidean",
                    stream=None, **options):
    """T(x_i) = sum_j P_ij y_j / sum_j P_ij, ``[B, n, d]``, from ``result`` (a solve of the
    same problem) or from a solve with ``options`` when it is None."""
    result = _solve_if_needed("barycentric_map", x, y, result, a, b, cost_kind, stream,
                              options)
    if isinstance(result, DeviceSinkhornResult):
        return _derived_async("map", x, y, None, result, stream, 0, _cloud_shape(result, x),
                              _device.FLOAT32)
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
    if isinstance(result, DeviceSinkhornResult):
        if wrt not in ("x", "y"):
            raise InvalidArgument(f"gradient: wrt must be 'x' or 'y', got '{wrt}'")
        return _derived_async("grad_" + wrt, x, y, None, result, stream, 0,
                              _cloud_shape(result, x if wrt == "x" else y), _device.FLOAT32)
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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"sample_partners: seed must be a non-negative int, got {seed!r}")
    if isinstance(result, DeviceSinkhornResult):
        shape = (result.batch, result.n) if result.batched else (result.n,)
        return _derived_async("partners", x, y, cost, result, stream, seed, shape,
                              _device.INT64)
    handle = resolve_stream(stream, like)
    out = _native.sample_partners(prepare(x), prepare(y), prepare(cost), prepare(a),
                                  prepare(b), result._native, seed, handle,
                                  cost_kind if cost is None else "matrix")
    return converter(like)(out)


def sinkhorn_divergence(x, y, *, a=None, b=None, result=None, stream=None, **options):
    """Debiased Sinkhorn divergence S_eps = OT_eps(a,b) - OT_eps(a,a)/2 - OT_eps(b,b)/2
    per problem (a float unbatched, ``[B]`` batched). Synchronous on every input (the
    library has no stream-ordered divergence). ``result``: an existing (x, y)
    solve with the same options (only the two self terms are then solved)."""
    handle = resolve_stream(stream, x)
    if result is not None and not isinstance(result, SinkhornResult):
        raise TypeError("sinkhorn_divergence: result must be a SinkhornResult (a solve "
                        f"with sync=True), got {type(result).__name__}")
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


def _columns(reports, key, batched, kind):
    """One report field over the batch: a Python scalar unbatched, a NumPy array batched."""
    import numpy as np
    values = [r[key] for r in reports]
    if not batched:
        return kind(values[0])
    return np.asarray(values, dtype={float: np.float64, int: np.int64, bool: bool}[kind])


class AssignmentResult:
    """assignment's outputs. ``row_to_col`` ``[K, n]`` and ``col_to_row`` ``[K, m]``
    (int64, -1 for an unmatched row or column; ``[n]``, ``[m]`` for one problem), the
    dual potentials ``u`` ``[K, n]`` and ``v`` ``[K, m]`` (float64) that certify
    optimality, ``reports`` (dicts: cost, dual, gap, max_violation, iterations) and the
    same fields over the batch as attributes; ``backend``, ``device``, ``time_ms``.

    From the stream-ordered path (``asynchronous`` True) ``row_to_col``,
    ``col_to_row``, ``cost`` and ``gap`` are arrays of the caller's framework on the
    device (``[K]`` or 0-d), filled by work queued on ``stream``; ``u``, ``v``, ``dual``,
    ``max_violation`` and ``iterations`` are None (the async API does not return
    them: pass sync=True), and an infeasible problem reports gap = inf instead of
    raising :class:`otgpu.Infeasible`."""

    def __init__(self, fields, asynchronous=False, fw=None):
        self.asynchronous = asynchronous
        self._fw = fw
        for key in ("row_to_col", "col_to_row", "u", "v", "backend", "device", "batch", "n",
                    "m", "batched", "time_ms", "stream"):
            setattr(self, key, fields.get(key))
        self._reports = fields.get("reports")
        self._cost = fields.get("cost")
        self._gap = fields.get("gap")

    @property
    def reports(self):
        if self._reports is None:  # async: read the device arrays (waits for the stream)
            cost = _device.host_read(self._cost, self._fw).reshape(-1)
            gap = _device.host_read(self._gap, self._fw).reshape(-1)
            return [{"cost": float(c), "gap": float(g)} for c, g in zip(cost, gap)]
        return self._reports

    def _col(self, key, kind):
        if self._reports is None:
            return None
        return _columns(self._reports, key, self.batched, kind)

    @property
    def cost(self):
        return self._cost if self.asynchronous else self._col("cost", float)

    @property
    def gap(self):
        return self._gap if self.asynchronous else self._col("gap", float)

    dual = property(lambda self: self._col("dual", float))
    max_violation = property(lambda self: self._col("max_violation", float))
    iterations = property(lambda self: self._col("iterations", int))

    def __repr__(self):
        return (f"AssignmentResult(backend={self.backend!r}, batch={self.batch}, n={self.n}, "
                f"m={self.m}, asynchronous={self.asynchronous})")


def assignment(x=None, y=None, *, cost=None, cost_kind="sqeuclidean", stream=None,
               sync=False, **options):
    """Exact linear assignment (otgpu::assignment), K problems at once: a cost matrix
    ``cost=[K, n, m]`` (``[n, m]``: one problem; +inf forbids a pair) or point clouds
    ``x [K, n, d]``, ``y [K, m, d]`` with cost_kind "sqeuclidean", "euclidean" or
    "neg_dot" (C_ij = -<x_i, y_j>). min(n, m) pairs are matched. Options: backend,
    device, cpu_threads. Raises :class:`otgpu.Infeasible` (a ValueError) when the
    allowed pairs admit no such matching. torch CUDA / CuPy inputs take the
    stream-ordered path (otgpu::assignment_async) unless ``sync=True``. Returns an
    :class:`AssignmentResult`."""
    like = x if x is not None else cost
    handle = resolve_stream(stream, like)
    kind = cost_kind if cost is None else "matrix"
    if not sync and options.get("backend") != "cpu":
        fw = _device.async_framework((x, y, cost), _native)
        if fw is not None:
            return _assignment_async(x, y, cost, kind, handle, fw, options)
    d = _native.assignment(prepare(x), prepare(y), prepare(cost), handle, cost_kind=kind,
                           **options)
    convert = converter(like)
    for key in ("row_to_col", "col_to_row", "u", "v"):
        d[key] = convert(d[key])
    return AssignmentResult(d)


def _assignment_async(x, y, cost, kind, handle, fw, options):
    if cost is not None:
        s = tuple(cost.shape)
        K, n, m = (s[0], s[1], s[2]) if len(s) == 3 else (1, s[-2], s[-1])
        batched = len(s) == 3
    else:
        sx, sy = tuple(x.shape), tuple(y.shape)
        batched = len(sx) == 3
        K, n, m = (sx[0] if batched else 1), sx[-2], sy[-2]
    like = x if x is not None else cost
    alloc = _device.Allocator(like, fw, handle)
    with alloc.on_stream():
        rows = alloc.empty((K, n) if batched else (n,), _device.INT64)
        cols = alloc.empty((K, m) if batched else (m,), _device.INT64)
        c = alloc.empty((K,), _device.FLOAT64)
        g = alloc.empty((K,), _device.FLOAT64)
    problem = (prepare(x), prepare(y), prepare(cost))
    ptrs = [_device.data_ptr(t, fw) for t in (rows, cols, c, g)]
    device = _native._assignment_async(*problem, handle, ptrs, cost_kind=kind, **options)
    res = AssignmentResult({"row_to_col": rows, "col_to_row": cols, "backend": "cuda",
                            "device": device, "batch": K, "n": n, "m": m, "batched": batched,
                            "time_ms": None, "stream": handle,
                            "cost": c if batched else c[0], "gap": g if batched else g[0]},
                           asynchronous=True, fw=fw)
    res._problem = problem  # the inputs stay referenced while the work may be queued
    return res


class CouplingResult:
    """couple's outputs: pairs ``(i[k, t], j[k, t])`` of rows of x0 and x1 (int64
    ``[K, pairs]``, ``[pairs]`` for rank-2 inputs), ``reports`` (dicts: pair_cost, ot,
    eps, gap, iterations, converged) and the same fields over the batch as attributes;
    ``backend``, ``batch``, ``pairs``, ``time_ms``. From the stream-ordered path
    (``asynchronous`` True) i and j are framework arrays filled by work queued on
    ``stream`` and the reports are None (pass sync=True for them)."""

    def __init__(self, fields, asynchronous=False):
        self.asynchronous = asynchronous
        for key in ("i", "j", "reports", "backend", "batch", "pairs", "batched", "time_ms",
                    "stream"):
            setattr(self, key, fields.get(key))

    def _col(self, key, kind):
        if self.reports is None:
            return None
        return _columns(self.reports, key, self.batched, kind)

    pair_cost = property(lambda self: self._col("pair_cost", float))
    ot = property(lambda self: self._col("ot", float))
    eps = property(lambda self: self._col("eps", float))
    gap = property(lambda self: self._col("gap", float))
    iterations = property(lambda self: self._col("iterations", int))
    converged = property(lambda self: self._col("converged", bool))

    def __repr__(self):
        return (f"CouplingResult(backend={self.backend!r}, batch={self.batch}, "
                f"pairs={self.pairs}, asynchronous={self.asynchronous})")


def coupling_pairs(bs0, bs1, **options):
    """Pairs per minibatch :func:`couple` returns for these sizes and options."""
    return _native.coupling_pairs(bs0, bs1, **options)


def couple(x0, x1, *, stream=None, sync=False, **options):
    """Minibatch OT couplings for flow matching (otgpu::couple): pairs rows of x0
    ``[K, bs0, d]`` (noise) with rows of x1 ``[K, bs1, d]`` (data), ``[bs, d]`` for one
    minibatch. Options (C++ names and defaults): method="sinkhorn" ("exact":
    the optimal permutation, bs0 == bs1; "unbalanced"), cost_kind="sqeuclidean",
    eps=0.05, eps_relative=True, rho=1.0, pairs="joint" ("per_row"), num_pairs=0
    (bs0), replacement=False, seed=0, sinkhorn=None (a dict of :func:`sinkhorn`
    options for the entropic solve), backend="auto", device=None. torch CUDA / CuPy
    inputs take the stream-ordered path (otgpu::couple_async) unless ``sync=True``.
    Returns a :class:`CouplingResult`."""
    handle = resolve_stream(stream, x0)
    if not sync and options.get("backend") != "cpu":
        fw = _device.async_framework((x0, x1), _native)
        if fw is not None:
            return _couple_async(x0, x1, handle, fw, options)
    d = _native.couple(prepare(x0), prepare(x1), handle, **options)
    convert = converter(x0)
    d["i"], d["j"] = convert(d["i"]), convert(d["j"])
    return CouplingResult(d)


def _couple_async(x0, x1, handle, fw, options):
    s0, s1 = tuple(x0.shape), tuple(x1.shape)
    batched = len(s0) == 3
    K = s0[0] if batched else 1
    pairs = _native.coupling_pairs(s0[-2], s1[-2], **options)
    alloc = _device.Allocator(x0, fw, handle)
    with alloc.on_stream():
        i = alloc.empty((K, pairs) if batched else (pairs,), _device.INT64)
        j = alloc.empty((K, pairs) if batched else (pairs,), _device.INT64)
    p0, p1 = prepare(x0), prepare(x1)
    _native._couple_async(p0, p1, handle, _device.data_ptr(i, fw), _device.data_ptr(j, fw),
                          **options)
    res = CouplingResult({"i": i, "j": j, "backend": "cuda", "batch": K, "pairs": pairs,
                          "batched": batched, "stream": handle}, asynchronous=True)
    res._problem = (p0, p1)
    return res


class MinibatchResult:
    """minibatch_ot's outputs: ``mean`` and ``std_error`` (floats), ``values`` ``[K]``,
    ``grad_x`` ``[N, d]`` and ``grad_y`` ``[M, d]`` (None without gradient; the
    caller's kind of array and device, dtype of x), ``rows_x``/``rows_y`` ``[K, bs]``
    (NumPy int64), ``converged``, ``backend``, ``time_ms``."""

    __slots__ = ("mean", "std_error", "values", "grad_x", "grad_y", "rows_x", "rows_y",
                 "converged", "backend", "time_ms")

    def __init__(self, d, convert):
        for key in self.__slots__:
            setattr(self, key, d[key])
        if self.grad_x is not None:
            self.grad_x = convert(self.grad_x)
            self.grad_y = convert(self.grad_y)

    def __repr__(self):
        return (f"MinibatchResult(mean={self.mean}, std_error={self.std_error}, "
                f"backend={self.backend!r})")


def minibatch_ot(x, y, **options):
    """The minibatch OT estimator (otgpu::minibatch_ot, Fatras et al. 2020): the mean
    over k minibatches of size bs of OT(mu_k, nu_k) with its standard error and its
    gradient. Options (C++ names and defaults): k=16, bs=64, method="sinkhorn"
    ("exact"), debiased=False, cost_kind="sqeuclidean", eps=0.05, eps_relative=True,
    seed=0, gradient=True, sinkhorn=None (dict), backend="auto", device=None. The
    library reads x and y from host memory: device arrays are copied to the host first
    (synchronous). Returns a :class:`MinibatchResult`."""
    d = _native.minibatch_ot(to_host(prepare(x)), to_host(prepare(y)), **options)
    return MinibatchResult(d, converter(x))


minibatch_rows = _native.minibatch_rows
