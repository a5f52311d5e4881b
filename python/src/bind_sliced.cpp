// otgpu/sliced.h: exact 1-D OT, the monotone coupling, sliced Wasserstein.
#include <fmt/format.h>

#include <string_view>
#include <utility>

#include "py_common.h"

namespace otgpu_py {
namespace {

using otgpu::Backend;

std::uint64_t opt_u64(nb::handle v, const char* fn, const char* name) {
  if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr())) {
    throw nb::type_error(fmt::format("{}: option {} must be an int, got {}", fn, name,
                                     nb::type_name(v.type()).c_str())
                             .c_str());
  }
  const unsigned long long s = PyLong_AsUnsignedLongLong(v.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw otgpu::InvalidArgument(fmt::format("{}: option {} must be in [0, 2^64), got {}", fn, name,
                                             nb::cast<std::string>(nb::str(v))));
  }
  return static_cast<std::uint64_t>(s);
}

nb::object vector_out(std::vector<double>&& v, bool batched, std::size_t B) {
  if (batched) return to_numpy(std::move(v), {B}, false);
  return nb::float_(v.at(0));
}

nb::dict run_sliced(nb::handle x, nb::handle y, nb::handle a, nb::handle b, nb::handle stream,
                    const nb::kwargs& kw) {
  const char* fn = "sliced_wasserstein";
  otgpu::SlicedOptions o;
  int device = -1;
  nb::handle directions = nb::none();
  for (auto [key, value] : kw) {
    const std::string_view k = PyUnicode_AsUTF8(key.ptr());
    if (k == "projections")
      o.projections = opt_int(value, fn, "projections");
    else if (k == "p")
      o.p = opt_double(value, fn, "p");
    else if (k == "seed")
      o.seed = opt_u64(value, fn, "seed");
    else if (k == "directions")
      directions = value;
    else if (k == "max_sliced")
      o.max_sliced = opt_bool(value, fn, "max_sliced");
    else if (k == "backend")
      o.backend = otgpu::parse_backend(opt_str(value, fn, "backend"));
    else if (k == "device")
      device = value.is_none() ? -1 : opt_int(value, fn, "device");
    else if (k == "gradients")
      o.gradients = opt_bool(value, fn, "gradients");
    else if (k == "cpu_threads")
      o.cpu_threads = opt_int(value, fn, "cpu_threads");
    else
      unknown_option(fn, k);
  }
  const StreamArg s = read_stream(stream);
  Placement where;
  std::vector<Array> keep;
  otgpu::SlicedProblem prob;
  prob.x = to_view(x, "x", where, keep);
  prob.y = to_view(y, "y", where, keep);
  prob.a = to_view(a, "a", where, keep);
  prob.b = to_view(b, "b", where, keep);
  o.directions = to_view(directions, "directions", where, keep);
  o.device = resolve_device(where, device, fn);
  const bool ctx = use_context(where, s.given, o.backend, fn);
  otgpu::SlicedResult r;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(o.device, s.handle);
      r = otgpu::sliced_wasserstein(*lease, prob, o);
    } else {
      r = otgpu::sliced_wasserstein(prob, o);
    }
  }
  const bool batched = prob.x.rank == 3;
  const auto B = static_cast<std::size_t>(r.batch);
  const auto L = static_cast<std::size_t>(r.projections);
  const auto n = static_cast<std::size_t>(r.n);
  const auto m = static_cast<std::size_t>(r.m);
  const auto d = static_cast<std::size_t>(r.d);
  nb::dict out;
  out["value"] = vector_out(std::move(r.value), batched, B);
  out["value_pp"] = vector_out(std::move(r.value_pp), batched, B);
  out["per_direction"] = batched ? to_numpy(std::move(r.per_direction), {B, L}, false)
                                 : to_numpy(std::move(r.per_direction), {L}, false);
  if (o.gradients) {
    out["grad_x"] = batched ? to_numpy(std::move(r.grad_x), {B, n, d}, where.float32)
                            : to_numpy(std::move(r.grad_x), {n, d}, where.float32);
    out["grad_y"] = batched ? to_numpy(std::move(r.grad_y), {B, m, d}, where.float32)
                            : to_numpy(std::move(r.grad_y), {m, d}, where.float32);
  } else {
    out["grad_x"] = nb::none();
    out["grad_y"] = nb::none();
  }
  out["backend"] = std::string(otgpu::to_string(r.backend));
  out["time_ms"] = r.time_ms;
  return out;
}

nb::object run_w1d(nb::handle x, nb::handle y, nb::handle a, nb::handle b, double p,
                   const std::string& backend, int device_opt, nb::handle stream) {
  const char* fn = "wasserstein_1d";
  const StreamArg s = read_stream(stream);
  Placement where;
  std::vector<Array> keep;
  const auto vx = to_view(x, "x", where, keep);
  const auto vy = to_view(y, "y", where, keep);
  const auto va = to_view(a, "a", where, keep);
  const auto vb = to_view(b, "b", where, keep);
  const Backend be = otgpu::parse_backend(backend);
  const int device = resolve_device(where, device_opt, fn);
  // No GpuContext overload: device inputs are read on the legacy default stream after
  // the caller's stream, if another one was named, has been synchronized.
  const bool sync = where.any_device && s.given && s.handle != 0;
  std::vector<double> out;
  {
    nb::gil_scoped_release nogil;
    if (sync) {
      ContextLease lease(device, s.handle);
      (*lease).synchronize();
    }
    out = otgpu::wasserstein_1d(vx, vy, va, vb, p, be, device);
  }
  const std::size_t B = out.size();
  return vector_out(std::move(out), vx.rank == 2, B);
}

nb::list run_coupling(nb::handle x, nb::handle y, nb::handle a, nb::handle b, double p) {
  Placement where;
  std::vector<Array> keep;
  const auto vx = to_view(x, "x", where, keep);
  const auto vy = to_view(y, "y", where, keep);
  const auto va = to_view(a, "a", where, keep);
  const auto vb = to_view(b, "b", where, keep);
  std::vector<otgpu::Coupling1D> c;
  {
    nb::gil_scoped_release nogil;
    c = otgpu::monotone_coupling_1d(vx, vy, va, vb, p);
  }
  nb::list out;
  for (auto& k : c) {
    std::vector<std::int64_t> i, j;
    std::vector<double> mass;
    for (const auto& e : k.entries) {
      i.push_back(e.i);
      j.push_back(e.j);
      mass.push_back(e.mass);
    }
    const std::size_t len = i.size();
    out.append(nb::make_tuple(to_numpy_int64(std::move(i), {len}),
                              to_numpy_int64(std::move(j), {len}),
                              to_numpy(std::move(mass), {len}, false), k.cost));
  }
  return out;
}

}  // namespace

void bind_sliced(nb::module_& m) {
  m.def("sliced_wasserstein", &run_sliced, nb::arg("x"), nb::arg("y"), nb::arg("a").none(),
        nb::arg("b").none(), nb::arg("stream").none(), nb::arg("options"));
  m.def("wasserstein_1d", &run_w1d, nb::arg("x"), nb::arg("y"), nb::arg("a").none(),
        nb::arg("b").none(), nb::arg("p"), nb::arg("backend"), nb::arg("device"),
        nb::arg("stream").none());
  m.def("monotone_coupling_1d", &run_coupling, nb::arg("x"), nb::arg("y"), nb::arg("a").none(),
        nb::arg("b").none(), nb::arg("p"));
  m.def(
      "sliced_directions",
      [](std::int64_t d, int projections, std::uint64_t seed) {
        auto v = otgpu::sliced_directions(d, projections, seed);
        return to_numpy(std::move(v),
                        {static_cast<std::size_t>(d), static_cast<std::size_t>(projections)},
                        false);
      },
      nb::arg("d"), nb::arg("projections"), nb::arg("seed"));
}

}  // namespace otgpu_py
