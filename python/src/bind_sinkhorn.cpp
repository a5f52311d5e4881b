// otgpu/sinkhorn.h and otgpu/device.h: sinkhorn, its derived outputs and the divergence.
//
// Every function takes the problem's arrays as they are (host or device memory, any
// non-negative strides, fp32 or fp64) and the options as keyword arguments named as
// the fields of otgpu::SinkhornOptions. Device arrays, and host arrays with an
// explicit stream on a CUDA backend, run on the cached GpuContext of (device,
// stream), so the work is ordered after the caller's earlier work on that stream.
#include <fmt/format.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <ctime>
#include <exception>
#include <string_view>
#include <utility>

#include "py_common.h"

namespace otgpu_py {
namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;

/// The arrays of one call as views, and the imported arrays that keep them valid.
struct BoundProblem {
  SinkhornProblem problem;
  Placement where;
  std::vector<Array> keep;
  bool batched = false;  ///< x (or cost) has a batch axis: outputs keep it
};

/// `seen_from_y`: the arrays are the caller's (y, x, b, a), bound as (x, y, a, b) of the
/// problem seen from the other side; error messages keep the caller's names.
BoundProblem bind_problem(nb::handle x, nb::handle y, nb::handle cost, nb::handle a, nb::handle b,
                          CostKind kind, const char* fn, bool seen_from_y = false) {
  const char* nx = seen_from_y ? "y" : "x";
  const char* ny = seen_from_y ? "x" : "y";
  const char* na = seen_from_y ? "b" : "a";
  const char* nw = seen_from_y ? "a" : "b";
  BoundProblem bp;
  bp.keep.reserve(5);
  const Geometry g = bind_geometry(x, y, cost, kind, fn, nx, ny, bp.where, bp.keep);
  bp.problem.x = g.x;
  bp.problem.y = g.y;
  bp.problem.cost = g.cost;
  bp.problem.cost_kind = g.kind;
  bp.batched = g.batched;
  bp.problem.a = to_view(a, na, bp.where, bp.keep);
  bp.problem.b = to_view(b, nw, bp.where, bp.keep);
  return bp;
}

/// Calls `progress` (a Python callable) from the solver's thread with the GIL; a
/// Python exception cancels the solve and is raised again once it returns.
struct ProgressBridge {
  nb::object fn;
  std::exception_ptr error;
};

struct ParsedOptions {
  SinkhornOptions options;
  CostKind cost_kind = CostKind::sqeuclidean;
  int device = -1;  ///< -1: from the inputs, else 0
  std::shared_ptr<ProgressBridge> progress;
};

/// options.devices from a list or tuple of ints (None or []: one device). The values
/// are the library's to check (backend, ordinals, host arrays, n): its typed errors
/// name the argument and the value.
std::vector<int> opt_devices(nb::handle v, const char* fn) {
  std::vector<int> out;
  if (v.is_none()) return out;
  if (!PyList_Check(v.ptr()) && !PyTuple_Check(v.ptr())) {
    throw nb::type_error(fmt::format("{}: option devices must be a list of CUDA device ordinals "
                                     "(ints), got {}",
                                     fn, nb::type_name(v.type()).c_str())
                             .c_str());
  }
  std::size_t k = 0;
  for (nb::handle item : v) {
    const std::string name = fmt::format("devices[{}]", k++);
    out.push_back(opt_int(item, fn, name.c_str()));
  }
  return out;
}

otgpu::SinkhornAcceleration parse_acceleration(const std::string& s) {
  if (s == "overrelax") return otgpu::SinkhornAcceleration::overrelax;
  if (s == "none") return otgpu::SinkhornAcceleration::none;
  throw otgpu::InvalidArgument(
      fmt::format("acceleration: unknown value '{}' (none, overrelax)", s));
}

ParsedOptions parse_options(const nb::kwargs& kw, const char* fn) {
  ParsedOptions p;
  SinkhornOptions& o = p.options;
  for (auto [key, value] : kw) {
    const std::string_view k = PyUnicode_AsUTF8(key.ptr());
    if (k == "eps") {
      o.eps = opt_double(value, fn, "eps");
    } else if (k == "eps_relative") {
      o.eps_relative = opt_bool(value, fn, "eps_relative");
    } else if (k == "tol") {
      o.tol = opt_double_or_auto(value, fn, "tol");
    } else if (k == "max_iter") {
      o.max_iter = opt_int(value, fn, "max_iter");
    } else if (k == "check_every") {
      o.check_every = opt_int(value, fn, "check_every");
    } else if (k == "eps_init") {
      o.eps_init = opt_double_or_auto(value, fn, "eps_init");
    } else if (k == "eps_decay") {
      o.eps_decay = opt_double(value, fn, "eps_decay");
    } else if (k == "rho_a") {
      o.rho_a = opt_double(value, fn, "rho_a");
    } else if (k == "rho_b") {
      o.rho_b = opt_double(value, fn, "rho_b");
    } else if (k == "f_init") {
      if (!value.is_none()) o.f_init = opt_host_vector(value, fn, "f_init");
    } else if (k == "g_init") {
      if (!value.is_none()) o.g_init = opt_host_vector(value, fn, "g_init");
    } else if (k == "acceleration") {
      o.acceleration = parse_acceleration(opt_str(value, fn, "acceleration"));
    } else if (k == "backend") {
      o.backend = otgpu::parse_backend(opt_str(value, fn, "backend"), "backend");
    } else if (k == "device") {
      p.device = value.is_none() ? -1 : opt_int(value, fn, "device");
    } else if (k == "devices") {
      o.devices = opt_devices(value, fn);
    } else if (k == "cpu_threads") {
      o.cpu_threads = opt_int(value, fn, "cpu_threads");
    } else if (k == "precision") {
      o.precision = otgpu::parse_precision(opt_str(value, fn, "precision"), "precision");
    } else if (k == "cost_kind") {
      p.cost_kind = otgpu::parse_cost_kind(opt_str(value, fn, "cost_kind"), "cost_kind");
    } else if (k == "progress") {
      if (value.is_none()) continue;
      if (!PyCallable_Check(value.ptr())) {
        throw nb::type_error(fmt::format("{}: option progress must be callable, got {}", fn,
                                         nb::type_name(value.type()).c_str())
                                 .c_str());
      }
      p.progress = std::make_shared<ProgressBridge>();
      p.progress->fn = nb::borrow(value);
      o.progress = [bridge = p.progress](const otgpu::SinkhornProgress& s) -> bool {
        nb::gil_scoped_acquire gil;
        try {
          nb::dict d;
          d["problem"] = s.problem;
          d["iteration"] = s.iteration;
          d["eps"] = s.eps;
          d["residual"] = s.residual;
          d["elapsed_s"] = s.elapsed_s;
          d["active"] = s.active;
          nb::object r = bridge->fn(d);
          return r.is_none() || PyObject_IsTrue(r.ptr()) == 1;
        } catch (...) {
          if (!bridge->error) bridge->error = std::current_exception();
          return false;
        }
      };
    } else {
      unknown_option(fn, k);
    }
  }
  return p;
}

const char* acceleration_name(otgpu::SinkhornAcceleration a) {
  return a == otgpu::SinkhornAcceleration::overrelax ? "overrelax" : "none";
}

/// A solve as Python sees it: the C++ result (potentials in fp64, reports, the CUDA
/// state the derived outputs reuse), whether the inputs had a batch axis and whether
/// the outputs follow an fp32 input.
struct PySinkhorn {
  SinkhornResult r;
  bool batched = false;
  bool float32 = false;
  /// Solved over options.devices: the derived outputs run per shard on the shards'
  /// devices (the public overloads without a context), never on one leased context.
  bool split = false;

  nb::object potential(const std::vector<double>& v, std::int64_t len, bool float64) const {
    std::vector<double> copy(v);
    const auto B = static_cast<std::size_t>(r.batch);
    const auto L = static_cast<std::size_t>(len);
    return batched ? to_numpy(std::move(copy), {B, L}, float32 && !float64)
                   : to_numpy(std::move(copy), {L}, float32 && !float64);
  }
  nb::list reports() const {
    nb::list out;
    for (const auto& p : r.problems) {
      nb::dict d;
      d["eps"] = p.eps;
      d["ot_eps"] = p.ot_eps;
      d["transport_cost"] = p.transport_cost;
      d["marginal_error"] = p.marginal_error;
      d["residual"] = p.residual;
      d["iterations"] = p.iterations;
      d["converged"] = p.converged;
      d["acceleration"] = acceleration_name(p.acceleration);
      d["omega"] = p.omega;
      out.append(d);
    }
    return out;
  }
  /// One report field over the batch, fp64 [B] (converged as 0/1, iterations exact).
  nb::object column(const std::string& name) const {
    std::vector<double> v;
    v.reserve(r.problems.size());
    for (const auto& p : r.problems) {
      if (name == "eps")
        v.push_back(p.eps);
      else if (name == "ot_eps")
        v.push_back(p.ot_eps);
      else if (name == "transport_cost")
        v.push_back(p.transport_cost);
      else if (name == "marginal_error")
        v.push_back(p.marginal_error);
      else if (name == "residual")
        v.push_back(p.residual);
      else if (name == "iterations")
        v.push_back(p.iterations);
      else if (name == "converged")
        v.push_back(p.converged ? 1.0 : 0.0);
      else if (name == "omega")
        v.push_back(p.omega);
      else
        throw nb::key_error(name.c_str());
    }
    return to_numpy(std::move(v), {r.problems.size()}, false);
  }
};

void rethrow_progress(const ParsedOptions& p) {
  if (p.progress && p.progress->error) std::rethrow_exception(p.progress->error);
}

PySinkhorn run_sinkhorn(nb::handle x, nb::handle y, nb::handle cost, nb::handle a, nb::handle b,
                        nb::handle stream, const nb::kwargs& kw) {
  const char* fn = "sinkhorn";
  ParsedOptions p = parse_options(kw, fn);
  const StreamArg s = read_stream(stream);
  BoundProblem bp = bind_problem(x, y, cost, a, b, p.cost_kind, fn);
  p.options.device = resolve_device(bp.where, p.device, fn);
  // A split over devices takes host arrays and runs one context per shard: never the
  // leased one (device arrays reach the library, which names the fault).
  const bool split = !p.options.devices.empty();
  const bool ctx = !split && use_context(bp.where, s.given, p.options.backend, fn);
  PySinkhorn out;
  out.batched = bp.batched;
  out.float32 = bp.where.float32;
  out.split = split && p.options.devices.size() > 1;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(p.options.device, s.handle);
      out.r = otgpu::sinkhorn(*lease, bp.problem, p.options);
    } else {
      out.r = otgpu::sinkhorn(bp.problem, p.options);
    }
  }
  rethrow_progress(p);
  return out;
}

enum class Derived { map, grad_x, grad_y };

/// The problem seen from the other side, (y, x, b, a) with potentials (g, f): the
/// gradient with respect to y is gradient_x of it. Its plan is P^T (b is rescaled to
/// the mass of a in the original, a to the mass of b here: the same plan when the
/// masses match, as a balanced solve requires).
SinkhornResult swapped(const SinkhornResult& r) {
  SinkhornResult t;
  t.backend = r.backend;
  t.device = r.device;
  t.batch = r.batch;
  t.n = r.m;
  t.m = r.n;
  t.d = r.d;
  t.f = r.g;
  t.g = r.f;
  t.problems = r.problems;
  t.tol = r.tol;
  return t;  // no state: it belongs to the (x, y) problem
}

nb::object run_derived(Derived what, nb::handle x, nb::handle y, nb::handle a, nb::handle b,
                       const PySinkhorn& res, nb::handle stream, const std::string& cost_kind) {
  const char* fn = what == Derived::map ? "barycentric_map" : "gradient";
  const StreamArg s = read_stream(stream);
  const CostKind kind = otgpu::parse_cost_kind(cost_kind, "cost_kind");
  BoundProblem bp = what == Derived::grad_y ? bind_problem(y, x, nb::none(), b, a, kind, fn, true)
                                            : bind_problem(x, y, nb::none(), a, b, kind, fn);
  const SinkhornResult* r = &res.r;
  SinkhornResult flipped;
  if (what == Derived::grad_y) {
    flipped = swapped(res.r);
    r = &flipped;
  }
  const bool ctx = r->backend == Backend::cuda && !res.split && (bp.where.any_device || s.given);
  std::vector<double> out;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(r->device, s.handle);
      out = what == Derived::map ? otgpu::barycentric_map(*lease, bp.problem, *r)
                                 : otgpu::gradient_x(*lease, bp.problem, *r);
    } else {
      out = what == Derived::map ? otgpu::barycentric_map(bp.problem, *r)
                                 : otgpu::gradient_x(bp.problem, *r);
    }
  }
  const auto B = static_cast<std::size_t>(r->batch);
  const auto n = static_cast<std::size_t>(r->n);
  const auto d = static_cast<std::size_t>(bp.problem.x.dim(bp.problem.x.rank - 1));
  return bp.batched ? to_numpy(std::move(out), {B, n, d}, bp.where.float32)
                    : to_numpy(std::move(out), {n, d}, bp.where.float32);
}

nb::object run_partners(nb::handle x, nb::handle y, nb::handle cost, nb::handle a, nb::handle b,
                        const PySinkhorn& res, std::uint64_t seed, nb::handle stream,
                        const std::string& cost_kind) {
  const char* fn = "sample_partners";
  const StreamArg s = read_stream(stream);
  const CostKind kind = otgpu::parse_cost_kind(cost_kind, "cost_kind");
  BoundProblem bp = bind_problem(x, y, cost, a, b, kind, fn);
  const bool ctx = res.r.backend == Backend::cuda && !res.split && (bp.where.any_device || s.given);
  std::vector<std::int64_t> out;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(res.r.device, s.handle);
      out = otgpu::sample_partners(*lease, bp.problem, res.r, seed);
    } else {
      out = otgpu::sample_partners(bp.problem, res.r, seed);
    }
  }
  const auto B = static_cast<std::size_t>(res.r.batch);
  const auto n = static_cast<std::size_t>(res.r.n);
  return bp.batched ? to_numpy_int64(std::move(out), {B, n}) : to_numpy_int64(std::move(out), {n});
}

nb::object run_divergence(nb::handle x, nb::handle y, nb::handle a, nb::handle b, nb::handle xy,
                          nb::handle stream, const nb::kwargs& kw) {
  const char* fn = "sinkhorn_divergence";
  ParsedOptions p = parse_options(kw, fn);
  const StreamArg s = read_stream(stream);
  BoundProblem bp = bind_problem(x, y, nb::none(), a, b, p.cost_kind, fn);
  p.options.device = resolve_device(bp.where, p.device, fn);
  const PySinkhorn* given = xy.is_none() ? nullptr : nb::cast<const PySinkhorn*>(xy);
  // No GpuContext overload: the library runs on the device's legacy default stream.
  // A caller's other stream is synchronized first, so its earlier work is complete.
  const bool sync = bp.where.any_device && s.given && s.handle != 0;
  std::vector<double> out;
  {
    nb::gil_scoped_release nogil;
    if (sync) {
      ContextLease lease(p.options.device, s.handle);
      (*lease).synchronize();
    }
    out = given ? otgpu::sinkhorn_divergence(bp.problem, given->r, p.options)
                : otgpu::sinkhorn_divergence(bp.problem, p.options);
  }
  rethrow_progress(p);
  if (!bp.batched) return nb::float_(out.at(0));
  const std::size_t B = out.size();
  return to_numpy(std::move(out), {B}, false);
}

// ---- The stream-ordered path (otgpu/device.h): caller-owned device outputs ----
//
// The Python layer allocates every output with the caller's framework on the inputs'
// device and passes the raw device pointers (data_ptr() / .data.ptr) as ints; these
// functions only enqueue work on the cached context of (device, stream) and return.

/// The options of an async call: the sinkhorn options without progress (a host
/// callback needs host checks, which the async path has none of).
ParsedOptions async_options(const nb::kwargs& kw, const char* fn) {
  ParsedOptions p = parse_options(kw, fn);
  if (p.progress) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: progress needs the synchronous path (sync=True)", fn));
  }
  if (!p.options.devices.empty()) {
    throw otgpu::InvalidArgument(fmt::format(
        "{}: devices splits a solve of host arrays over several devices; the stream-ordered "
        "path runs on the device arrays' own device",
        fn));
  }
  if (!p.options.f_init.empty() || !p.options.g_init.empty()) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: f_init/g_init are host warm starts; the async path warm-starts from the "
                    "output buffers",
                    fn));
  }
  return p;
}

void require_device(const Placement& where, const char* fn) {
  if (!where.any_device) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: the stream-ordered path needs inputs in CUDA device memory", fn));
  }
}

/// ptrs: f, g, ot_eps, transport_cost, marginal_error, residual, iterations (0: skip).
int run_sinkhorn_async(nb::handle x, nb::handle y, nb::handle cost, nb::handle a, nb::handle b,
                       std::uintptr_t stream, const std::vector<std::uintptr_t>& ptrs,
                       bool warm_start, const nb::kwargs& kw) {
  const char* fn = "sinkhorn";
  ParsedOptions p = async_options(kw, fn);
  BoundProblem bp = bind_problem(x, y, cost, a, b, p.cost_kind, fn);
  require_device(bp.where, fn);
  p.options.device = resolve_device(bp.where, p.device, fn);
  if (ptrs.size() != 7) throw nb::value_error("_sinkhorn_async: 7 output pointers expected");
  otgpu::DeviceSinkhornOutputs out;
  out.f = device_ptr<float>(ptrs[0]);
  out.g = device_ptr<float>(ptrs[1]);
  out.ot_eps = device_ptr<double>(ptrs[2]);
  out.transport_cost = device_ptr<double>(ptrs[3]);
  out.marginal_error = device_ptr<double>(ptrs[4]);
  out.residual = device_ptr<double>(ptrs[5]);
  out.iterations = device_ptr<int>(ptrs[6]);
  out.warm_start = warm_start;
  {
    nb::gil_scoped_release nogil;
    ContextLease lease(p.options.device, stream);
    otgpu::sinkhorn_async(*lease, bp.problem, p.options, out);
  }
  return p.options.device;
}

enum class AsyncDerived { map, grad_x, grad_y, partners };

/// The derived outputs of an async solve, from its fp32 potentials f_ptr [B*n] and
/// g_ptr [B*m] (device), written to out_ptr. The same problem and options as the solve.
void run_derived_async(const std::string& what, nb::handle x, nb::handle y, nb::handle cost,
                       nb::handle a, nb::handle b, std::uintptr_t stream, std::uintptr_t f_ptr,
                       std::uintptr_t g_ptr, std::uint64_t seed, std::uintptr_t out_ptr,
                       const nb::kwargs& kw) {
  AsyncDerived k = AsyncDerived::map;
  if (what == "map")
    k = AsyncDerived::map;
  else if (what == "grad_x")
    k = AsyncDerived::grad_x;
  else if (what == "grad_y")
    k = AsyncDerived::grad_y;
  else if (what == "partners")
    k = AsyncDerived::partners;
  else
    throw nb::value_error(("_derived_async: unknown output " + what).c_str());
  const char* fn = k == AsyncDerived::map        ? "barycentric_map"
                   : k == AsyncDerived::partners ? "sample_partners"
                                                 : "gradient";
  ParsedOptions p = async_options(kw, fn);
  // The gradient with respect to y is gradient_x of the problem seen from y,
  // (y, x, b, a) with potentials (g, f), whose plan is P^T (balanced problems).
  BoundProblem bp = k == AsyncDerived::grad_y
                        ? bind_problem(y, x, nb::none(), b, a, p.cost_kind, fn)
                        : bind_problem(x, y, cost, a, b, p.cost_kind, fn);
  require_device(bp.where, fn);
  p.options.device = resolve_device(bp.where, p.device, fn);
  const float* f = device_ptr<const float>(k == AsyncDerived::grad_y ? g_ptr : f_ptr);
  const float* g = device_ptr<const float>(k == AsyncDerived::grad_y ? f_ptr : g_ptr);
  nb::gil_scoped_release nogil;
  ContextLease lease(p.options.device, stream);
  switch (k) {
    case AsyncDerived::map:
      otgpu::barycentric_map_async(*lease, bp.problem, p.options, g, device_ptr<float>(out_ptr));
      break;
    case AsyncDerived::grad_x:
    case AsyncDerived::grad_y:
      otgpu::gradient_x_async(*lease, bp.problem, p.options, f, g, device_ptr<float>(out_ptr));
      break;
    case AsyncDerived::partners:
      otgpu::sample_partners_async(*lease, bp.problem, p.options, g, seed,
                                   device_ptr<std::int64_t>(out_ptr));
      break;
  }
}

// The C++ side of python/bench/overhead.py: `repeats` calls of otgpu::sinkhorn on the
// problem and options given, each timed alone in microseconds of the calling thread's
// CPU time (CLOCK_THREAD_CPUTIME_ID: a loaded machine's preemptions do not count), with
// no Python between the clock reads; the script compares them with whole calls of
// otgpu.sinkhorn timed the same way.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

nb::object time_native_solves(nb::handle x, nb::handle y, int repeats, const nb::kwargs& kw) {
  ParsedOptions p = parse_options(kw, "_time_native_solves");
  BoundProblem bp =
      bind_problem(x, y, nb::none(), nb::none(), nb::none(), p.cost_kind, "_time_native_solves");
  std::vector<double> us(static_cast<std::size_t>(std::max(repeats, 1)));
  {
    nb::gil_scoped_release nogil;
    for (auto& t : us) {
      const double t0 = thread_cpu_us();
      const SinkhornResult r = otgpu::sinkhorn(bp.problem, p.options);
      t = thread_cpu_us() - t0;
    }
  }
  const std::size_t len = us.size();
  return to_numpy(std::move(us), {len}, false);
}

nb::dict sinkhorn_defaults() {
  const SinkhornOptions o;
  nb::dict d;
  d["eps"] = o.eps;
  d["eps_relative"] = o.eps_relative;
  d["tol"] = nb::none();  // kAuto: 1e-6 on the CPU, 1e-4 on CUDA
  d["max_iter"] = o.max_iter;
  d["check_every"] = o.check_every;
  d["eps_init"] = nb::none();  // kAuto
  d["eps_decay"] = o.eps_decay;
  d["rho_a"] = o.rho_a;
  d["rho_b"] = o.rho_b;
  d["f_init"] = nb::none();
  d["g_init"] = nb::none();
  d["acceleration"] = acceleration_name(o.acceleration);
  d["progress"] = nb::none();
  d["backend"] = std::string(otgpu::to_string(o.backend));
  d["device"] = nb::none();
  d["devices"] = nb::none();
  d["cpu_threads"] = o.cpu_threads;
  d["precision"] = std::string(otgpu::to_string(o.precision));
  d["cost_kind"] = std::string(otgpu::to_string(CostKind::sqeuclidean));
  return d;
}

}  // namespace

otgpu::SinkhornOptions nested_sinkhorn_options(nb::handle v, const char* fn) {
  if (v.is_none()) return {};
  if (!PyDict_Check(v.ptr())) {
    throw nb::type_error(
        fmt::format("{}: option sinkhorn must be a dict of Sinkhorn options, got {}", fn,
                    nb::type_name(v.type()).c_str())
            .c_str());
  }
  nb::kwargs kw = nb::borrow<nb::kwargs>(v);
  ParsedOptions p = parse_options(kw, fn);
  if (p.progress) {
    throw otgpu::InvalidArgument(fmt::format("{}: option sinkhorn cannot take progress", fn));
  }
  return p.options;
}

void bind_sinkhorn(nb::module_& m) {
  nb::class_<PySinkhorn>(m, "NativeSinkhorn")
      .def(
          "f", [](const PySinkhorn& s, bool float64) { return s.potential(s.r.f, s.r.n, float64); },
          nb::arg("float64") = false)
      .def(
          "g", [](const PySinkhorn& s, bool float64) { return s.potential(s.r.g, s.r.m, float64); },
          nb::arg("float64") = false)
      .def("reports", &PySinkhorn::reports)
      .def("column", &PySinkhorn::column)
      .def_prop_ro("backend",
                   [](const PySinkhorn& s) { return std::string(otgpu::to_string(s.r.backend)); })
      .def_prop_ro("device", [](const PySinkhorn& s) { return s.r.device; })
      .def_prop_ro("batch", [](const PySinkhorn& s) { return s.r.batch; })
      .def_prop_ro("n", [](const PySinkhorn& s) { return s.r.n; })
      .def_prop_ro("m", [](const PySinkhorn& s) { return s.r.m; })
      .def_prop_ro("d", [](const PySinkhorn& s) { return s.r.d; })
      .def_prop_ro("tol", [](const PySinkhorn& s) { return s.r.tol; })
      .def_prop_ro("time_ms", [](const PySinkhorn& s) { return s.r.time_ms; })
      .def_prop_ro("cancelled", [](const PySinkhorn& s) { return s.r.cancelled; })
      .def_prop_ro("batched", [](const PySinkhorn& s) { return s.batched; })
      .def_prop_ro("float32", [](const PySinkhorn& s) { return s.float32; })
      .def_prop_ro("precision",
                   [](const PySinkhorn& s) { return std::string(otgpu::to_string(s.r.precision)); })
      .def_prop_ro("tensor_cores", [](const PySinkhorn& s) { return s.r.tensor_cores; })
      .def_prop_ro("has_state", [](const PySinkhorn& s) { return s.r.state != nullptr; })
      .def("release_state", [](PySinkhorn& s) { s.r.state.reset(); });

  m.def("sinkhorn", &run_sinkhorn, nb::arg("x").none(), nb::arg("y").none(), nb::arg("cost").none(),
        nb::arg("a").none(), nb::arg("b").none(), nb::arg("stream").none(), nb::arg("options"));
  m.def(
      "barycentric_map",
      [](nb::handle x, nb::handle y, nb::handle a, nb::handle b, const PySinkhorn& r,
         nb::handle stream, const std::string& kind) {
        return run_derived(Derived::map, x, y, a, b, r, stream, kind);
      },
      nb::arg("x"), nb::arg("y"), nb::arg("a").none(), nb::arg("b").none(), nb::arg("result"),
      nb::arg("stream").none(), nb::arg("cost_kind"));
  m.def(
      "gradient",
      [](nb::handle x, nb::handle y, nb::handle a, nb::handle b, const PySinkhorn& r,
         nb::handle stream, const std::string& kind, const std::string& wrt) {
        if (wrt != "x" && wrt != "y") {
          throw otgpu::InvalidArgument(
              fmt::format("gradient: wrt must be 'x' or 'y', got '{}'", wrt));
        }
        return run_derived(wrt == "x" ? Derived::grad_x : Derived::grad_y, x, y, a, b, r, stream,
                           kind);
      },
      nb::arg("x"), nb::arg("y"), nb::arg("a").none(), nb::arg("b").none(), nb::arg("result"),
      nb::arg("stream").none(), nb::arg("cost_kind"), nb::arg("wrt"));
  m.def("sample_partners", &run_partners, nb::arg("x").none(), nb::arg("y").none(),
        nb::arg("cost").none(), nb::arg("a").none(), nb::arg("b").none(), nb::arg("result"),
        nb::arg("seed"), nb::arg("stream").none(), nb::arg("cost_kind"));
  m.def("sinkhorn_divergence", &run_divergence, nb::arg("x"), nb::arg("y"), nb::arg("a").none(),
        nb::arg("b").none(), nb::arg("xy").none(), nb::arg("stream").none(), nb::arg("options"));
  m.def("_sinkhorn_async", &run_sinkhorn_async, nb::arg("x").none(), nb::arg("y").none(),
        nb::arg("cost").none(), nb::arg("a").none(), nb::arg("b").none(), nb::arg("stream"),
        nb::arg("ptrs"), nb::arg("warm_start"), nb::arg("options"),
        "Enqueues otgpu::sinkhorn_async on the cached context of (device, stream) with "
        "caller-owned device outputs; returns the device ordinal at once.");
  m.def("_derived_async", &run_derived_async, nb::arg("what"), nb::arg("x").none(),
        nb::arg("y").none(), nb::arg("cost").none(), nb::arg("a").none(), nb::arg("b").none(),
        nb::arg("stream"), nb::arg("f_ptr"), nb::arg("g_ptr"), nb::arg("seed"), nb::arg("out_ptr"),
        nb::arg("options"));
  m.def(
      "_context_allocations",
      [](int device, std::uintptr_t stream) {
        nb::gil_scoped_release nogil;
        ContextLease lease(device, stream);
        return (*lease).allocations();
      },
      nb::arg("device"), nb::arg("stream"),
      "GpuContext::allocations() of the cached context of (device, stream) (created if "
      "absent): workspace and pinned growths and handle creations so far.");
  m.def(
      "_context_synchronize",
      [](int device, std::uintptr_t stream) {
        nb::gil_scoped_release nogil;
        ContextLease lease(device, stream);
        (*lease).synchronize();
      },
      nb::arg("device"), nb::arg("stream"),
      "Waits for the work queued on the stream of the cached context of (device, stream).");
  m.def("_time_native_solves", &time_native_solves, nb::arg("x"), nb::arg("y"), nb::arg("repeats"),
        nb::arg("options"));
  m.def("sinkhorn_defaults", &sinkhorn_defaults,
        "The defaults of otgpu::SinkhornOptions (None for the automatic ones).");
}

}  // namespace otgpu_py
