// otgpu/assignment.h, otgpu/coupling.h and otgpu/minibatch.h: exact assignment, the
// minibatch couplings of flow matching and the minibatch OT estimator.
//
// The synchronous entry points return host results (NumPy arrays owned by the C++
// vectors; the Python layer converts them); device arrays run on the cached
// GpuContext of (device, stream). The *_async entry points take caller-owned device
// outputs as raw pointers (ints) and only enqueue work on that context.
#include <fmt/format.h>
#include <nanobind/stl/vector.h>

#include <climits>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "py_common.h"

namespace otgpu_py {
namespace {

using otgpu::CostKind;

bool is_int(nb::handle v) { return PyLong_Check(v.ptr()) && !PyBool_Check(v.ptr()); }

std::int64_t opt_int64(nb::handle v, const char* fn, const char* name) {
  if (!is_int(v)) {
    throw nb::type_error(fmt::format("{}: option {} must be an int, got {}", fn, name,
                                     nb::type_name(v.type()).c_str())
                             .c_str());
  }
  const long long x = PyLong_AsLongLong(v.ptr());
  if (x == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw otgpu::InvalidArgument(fmt::format("{}: option {} out of the int64 range", fn, name));
  }
  return x;
}

std::uint64_t opt_seed(nb::handle v, const char* fn) {
  const std::int64_t s = opt_int64(v, fn, "seed");
  if (s < 0) {
    throw otgpu::InvalidArgument(fmt::format("{}: option seed = {} must be >= 0", fn, s));
  }
  return static_cast<std::uint64_t>(s);
}

/// One of `choices` by its name; InvalidArgument "<fn>: <name>: unknown value ..."
/// listing them otherwise.
template <class E>
E opt_choice(nb::handle value, const char* fn, const char* name,
             std::initializer_list<std::pair<std::string_view, E>> choices) {
  const std::string v = opt_str(value, fn, name);
  std::string names;
  for (const auto& [text, e] : choices) {
    if (v == text) return e;
    names += names.empty() ? std::string(text) : fmt::format(", {}", text);
  }
  throw otgpu::InvalidArgument(fmt::format("{}: {}: unknown value '{}' ({})", fn, name, v, names));
}

/// The options couple() and minibatch_ot() share (same names, same meaning) into `o`
/// (CouplingOptions or MinibatchOptions); false when `k` is not one of them.
template <class Options>
bool parse_shared_option(Options& o, std::string_view k, nb::handle value, const char* fn) {
  if (k == "cost_kind") {
    o.cost_kind = otgpu::parse_cost_kind(opt_str(value, fn, "cost_kind"), "cost_kind");
  } else if (k == "eps") {
    o.eps = opt_double(value, fn, "eps");
  } else if (k == "eps_relative") {
    o.eps_relative = opt_bool(value, fn, "eps_relative");
  } else if (k == "seed") {
    o.seed = opt_seed(value, fn);
  } else if (k == "sinkhorn") {
    o.sinkhorn = nested_sinkhorn_options(value, fn);
  } else if (k == "backend") {
    o.backend = otgpu::parse_backend(opt_str(value, fn, "backend"), "backend");
  } else {
    return false;
  }
  return true;
}

// ---- assignment ----

struct AssignmentArgs {
  otgpu::AssignmentProblem problem;
  otgpu::AssignmentOptions options;
  Placement where;
  std::vector<Array> keep;
  bool batched = false;
  int device = -1;
};

AssignmentArgs bind_assignment_args(nb::handle x, nb::handle y, nb::handle cost,
                                    const nb::kwargs& kw, const char* fn) {
  AssignmentArgs a;
  a.keep.reserve(3);
  CostKind kind = CostKind::sqeuclidean;
  for (auto [key, value] : kw) {
    const std::string_view k = PyUnicode_AsUTF8(key.ptr());
    if (k == "backend") {
      a.options.backend = otgpu::parse_backend(opt_str(value, fn, "backend"), "backend");
    } else if (k == "device") {
      a.device = value.is_none() ? -1 : opt_int(value, fn, "device");
    } else if (k == "cpu_threads") {
      a.options.cpu_threads = opt_int(value, fn, "cpu_threads");
    } else if (k == "cost_kind") {
      kind = otgpu::parse_cost_kind(opt_str(value, fn, "cost_kind"), "cost_kind");
    } else {
      unknown_option(fn, k);
    }
  }
  const Geometry g = bind_geometry(x, y, cost, kind, fn, "x", "y", a.where, a.keep);
  a.problem.x = g.x;
  a.problem.y = g.y;
  a.problem.cost = g.cost;
  a.problem.cost_kind = g.kind;
  a.batched = g.batched;
  a.options.device = resolve_device(a.where, a.device, fn);
  return a;
}

nb::object int64_out(std::vector<std::int64_t>&& v, bool batched, std::int64_t k,
                     std::int64_t len) {
  const auto K = static_cast<std::size_t>(k);
  const auto L = static_cast<std::size_t>(len);
  return batched ? to_numpy_int64(std::move(v), {K, L}) : to_numpy_int64(std::move(v), {L});
}

nb::object double_out(std::vector<double>&& v, bool batched, std::int64_t k, std::int64_t len) {
  const auto K = static_cast<std::size_t>(k);
  const auto L = static_cast<std::size_t>(len);
  return batched ? to_numpy(std::move(v), {K, L}, false) : to_numpy(std::move(v), {L}, false);
}

nb::dict run_assignment(nb::handle x, nb::handle y, nb::handle cost, nb::handle stream,
                        const nb::kwargs& kw) {
  const char* fn = "assignment";
  const StreamArg s = read_stream(stream);
  AssignmentArgs a = bind_assignment_args(x, y, cost, kw, fn);
  const bool ctx = use_context(a.where, s.given, a.options.backend, fn);
  otgpu::AssignmentResult r;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(a.options.device, s.handle);
      r = otgpu::assignment(*lease, a.problem, a.options);
    } else {
      r = otgpu::assignment(a.problem, a.options);
    }
  }
  nb::dict d;
  nb::list reports;
  for (const auto& p : r.problems) {
    nb::dict e;
    e["cost"] = p.cost;
    e["dual"] = p.dual;
    e["gap"] = p.gap;
    e["max_violation"] = p.max_violation;
    e["iterations"] = p.iterations;
    reports.append(e);
  }
  d["row_to_col"] = int64_out(std::move(r.row_to_col), a.batched, r.batch, r.n);
  d["col_to_row"] = int64_out(std::move(r.col_to_row), a.batched, r.batch, r.m);
  d["u"] = double_out(std::move(r.u), a.batched, r.batch, r.n);
  d["v"] = double_out(std::move(r.v), a.batched, r.batch, r.m);
  d["reports"] = reports;
  d["backend"] = std::string(otgpu::to_string(r.backend));
  d["device"] = r.device;
  d["batch"] = r.batch;
  d["n"] = r.n;
  d["m"] = r.m;
  d["batched"] = a.batched;
  d["time_ms"] = r.time_ms;
  return d;
}

/// ptrs: row_to_col, col_to_row, cost, gap (0: skip). Returns the device ordinal.
int run_assignment_async(nb::handle x, nb::handle y, nb::handle cost, std::uintptr_t stream,
                         const std::vector<std::uintptr_t>& ptrs, const nb::kwargs& kw) {
  const char* fn = "assignment";
  AssignmentArgs a = bind_assignment_args(x, y, cost, kw, fn);
  if (!a.where.any_device) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: the stream-ordered path needs inputs in CUDA device memory", fn));
  }
  if (ptrs.size() != 4) throw nb::value_error("_assignment_async: 4 output pointers expected");
  otgpu::DeviceAssignmentOutputs out;
  out.row_to_col = device_ptr<std::int64_t>(ptrs[0]);
  out.col_to_row = device_ptr<std::int64_t>(ptrs[1]);
  out.cost = device_ptr<double>(ptrs[2]);
  out.gap = device_ptr<double>(ptrs[3]);
  nb::gil_scoped_release nogil;
  ContextLease lease(a.options.device, stream);
  otgpu::assignment_async(*lease, a.problem, a.options, out);
  return a.options.device;
}

// ---- couple ----

otgpu::CouplingOptions parse_couple_options(const nb::kwargs& kw, const char* fn, int& device) {
  otgpu::CouplingOptions o;
  device = -1;
  for (auto [key, value] : kw) {
    const std::string_view k = PyUnicode_AsUTF8(key.ptr());
    if (parse_shared_option(o, k, value, fn)) continue;
    if (k == "method") {
      o.method = otgpu::parse_coupling_method(opt_str(value, fn, "method"), "method");
    } else if (k == "rho") {
      o.rho = opt_double(value, fn, "rho");
    } else if (k == "pairs") {
      o.pairs = opt_choice<otgpu::CouplingPairs>(
          value, fn, "pairs",
          {{"per_row", otgpu::CouplingPairs::per_row}, {"joint", otgpu::CouplingPairs::joint}});
    } else if (k == "num_pairs") {
      o.num_pairs = opt_int64(value, fn, "num_pairs");
    } else if (k == "replacement") {
      o.replacement = opt_bool(value, fn, "replacement");
    } else if (k == "device") {
      device = value.is_none() ? -1 : opt_int(value, fn, "device");
    } else {
      unknown_option(fn, k);
    }
  }
  return o;
}

struct CoupleArgs {
  otgpu::TensorView x0, x1;
  otgpu::CouplingOptions options;
  Placement where;
  std::vector<Array> keep;
  bool batched = false;
};

CoupleArgs bind_couple_args(nb::handle x0, nb::handle x1, const nb::kwargs& kw, const char* fn) {
  CoupleArgs c;
  int device = -1;
  c.options = parse_couple_options(kw, fn, device);
  c.keep.reserve(2);
  c.x0 = to_view(x0, "x0", c.where, c.keep);
  c.x1 = to_view(x1, "x1", c.where, c.keep);
  c.batched = c.x0.rank == 3;
  c.options.device = resolve_device(c.where, device, fn);
  return c;
}

nb::dict run_couple(nb::handle x0, nb::handle x1, nb::handle stream, const nb::kwargs& kw) {
  const char* fn = "couple";
  const StreamArg s = read_stream(stream);
  CoupleArgs c = bind_couple_args(x0, x1, kw, fn);
  const bool ctx = use_context(c.where, s.given, c.options.backend, fn);
  otgpu::CouplingResult r;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(c.options.device, s.handle);
      r = otgpu::couple(*lease, c.x0, c.x1, c.options);
    } else {
      r = otgpu::couple(c.x0, c.x1, c.options);
    }
  }
  nb::list reports;
  for (const auto& p : r.problems) {
    nb::dict e;
    e["pair_cost"] = p.pair_cost;
    e["ot"] = p.ot;
    e["eps"] = p.eps;
    e["gap"] = p.gap;
    e["iterations"] = p.iterations;
    e["converged"] = p.converged;
    reports.append(e);
  }
  nb::dict d;
  d["i"] = int64_out(std::move(r.i), c.batched, r.batch, r.pairs);
  d["j"] = int64_out(std::move(r.j), c.batched, r.batch, r.pairs);
  d["reports"] = reports;
  d["backend"] = std::string(otgpu::to_string(r.backend));
  d["batch"] = r.batch;
  d["pairs"] = r.pairs;
  d["batched"] = c.batched;
  d["time_ms"] = r.time_ms;
  return d;
}

void run_couple_async(nb::handle x0, nb::handle x1, std::uintptr_t stream, std::uintptr_t i_ptr,
                      std::uintptr_t j_ptr, const nb::kwargs& kw) {
  const char* fn = "couple";
  CoupleArgs c = bind_couple_args(x0, x1, kw, fn);
  if (!c.where.any_device) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: the stream-ordered path needs inputs in CUDA device memory", fn));
  }
  nb::gil_scoped_release nogil;
  ContextLease lease(c.options.device, stream);
  otgpu::couple_async(*lease, c.x0, c.x1, c.options, device_ptr<std::int64_t>(i_ptr),
                      device_ptr<std::int64_t>(j_ptr));
}

std::int64_t run_coupling_pairs(std::int64_t bs0, std::int64_t bs1, const nb::kwargs& kw) {
  int device = -1;
  const otgpu::CouplingOptions o = parse_couple_options(kw, "coupling_pairs", device);
  return otgpu::coupling_pairs(bs0, bs1, o);
}

// ---- minibatch_ot ----

nb::dict run_minibatch(nb::handle x, nb::handle y, const nb::kwargs& kw) {
  const char* fn = "minibatch_ot";
  otgpu::MinibatchOptions o;
  for (auto [key, value] : kw) {
    const std::string_view k = PyUnicode_AsUTF8(key.ptr());
    if (parse_shared_option(o, k, value, fn)) continue;
    if (k == "k") {
      o.k = opt_int64(value, fn, "k");
    } else if (k == "bs") {
      o.bs = opt_int64(value, fn, "bs");
    } else if (k == "method") {
      o.method =
          opt_choice<otgpu::MinibatchMethod>(value, fn, "method",
                                             {{"exact", otgpu::MinibatchMethod::exact},
                                              {"sinkhorn", otgpu::MinibatchMethod::sinkhorn}});
    } else if (k == "debiased") {
      o.debiased = opt_bool(value, fn, "debiased");
    } else if (k == "gradient") {
      o.gradient = opt_bool(value, fn, "gradient");
    } else if (k == "device") {
      o.device = value.is_none() ? 0 : opt_int(value, fn, "device");
    } else {
      unknown_option(fn, k);
    }
  }
  Placement where;
  std::vector<Array> keep;
  keep.reserve(2);
  const otgpu::TensorView xv = to_view(x, "x", where, keep);
  const otgpu::TensorView yv = to_view(y, "y", where, keep);
  if (where.any_device) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: x and y must be in host memory (the Python layer copies device "
                    "arrays to the host first)",
                    fn));
  }
  otgpu::MinibatchResult r;
  {
    nb::gil_scoped_release nogil;
    r = otgpu::minibatch_ot(xv, yv, o);
  }
  const auto d = static_cast<std::size_t>(xv.dim(xv.rank - 1));
  const auto N = static_cast<std::size_t>(xv.dim(0));
  const auto M = static_cast<std::size_t>(yv.dim(0));
  const auto K = static_cast<std::size_t>(o.k);
  const auto bs = static_cast<std::size_t>(o.bs);
  nb::dict out;
  out["mean"] = r.mean;
  out["std_error"] = r.std_error;
  out["values"] = to_numpy(std::move(r.values), {K}, false);
  if (r.grad_x.empty()) {
    out["grad_x"] = nb::none();
    out["grad_y"] = nb::none();
  } else {
    out["grad_x"] = to_numpy(std::move(r.grad_x), {N, d}, where.float32);
    out["grad_y"] = to_numpy(std::move(r.grad_y), {M, d}, where.float32);
  }
  out["rows_x"] = to_numpy_int64(std::move(r.rows_x), {K, bs});
  out["rows_y"] = to_numpy_int64(std::move(r.rows_y), {K, bs});
  out["converged"] = r.converged;
  out["backend"] = std::string(otgpu::to_string(r.backend));
  out["time_ms"] = r.time_ms;
  return out;
}

nb::object run_minibatch_rows(std::int64_t N, std::int64_t bs, std::int64_t K, std::uint64_t seed,
                              int stream) {
  std::vector<std::int64_t> rows = otgpu::minibatch_rows(N, bs, K, seed, stream);
  const auto k = static_cast<std::size_t>(K);
  const auto b = static_cast<std::size_t>(bs);
  return to_numpy_int64(std::move(rows), {k, b});
}

}  // namespace

void bind_assignment(nb::module_& m) {
  m.def("assignment", &run_assignment, nb::arg("x").none(), nb::arg("y").none(),
        nb::arg("cost").none(), nb::arg("stream").none(), nb::arg("options"));
  m.def("_assignment_async", &run_assignment_async, nb::arg("x").none(), nb::arg("y").none(),
        nb::arg("cost").none(), nb::arg("stream"), nb::arg("ptrs"), nb::arg("options"));
  m.def("couple", &run_couple, nb::arg("x0"), nb::arg("x1"), nb::arg("stream").none(),
        nb::arg("options"));
  m.def("_couple_async", &run_couple_async, nb::arg("x0"), nb::arg("x1"), nb::arg("stream"),
        nb::arg("i_ptr"), nb::arg("j_ptr"), nb::arg("options"));
  m.def("coupling_pairs", &run_coupling_pairs, nb::arg("bs0"), nb::arg("bs1"), nb::arg("options"),
        "Pairs per minibatch couple() returns for these sizes and options.");
  m.def("minibatch_ot", &run_minibatch, nb::arg("x"), nb::arg("y"), nb::arg("options"));
  m.def("minibatch_rows", &run_minibatch_rows, nb::arg("N"), nb::arg("bs"), nb::arg("K"),
        nb::arg("seed") = 0, nb::arg("stream") = 0,
        "The rows minibatch_ot draws: [K, bs], sorted per batch (stream 0: x, 1: y).");
}

}  // namespace otgpu_py
