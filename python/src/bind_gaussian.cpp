// otgpu/gaussian.h: closed-form OT between Gaussians (W2, Bures, entropic, Monge map).
#include <fmt/format.h>

#include <utility>

#include "py_common.h"

namespace otgpu_py {
namespace {

nb::dict run_gaussian(nb::handle mean1, nb::handle cov1, nb::handle mean2, nb::handle cov2,
                      double eps, bool want_map, const std::string& backend, int device_opt,
                      nb::handle stream) {
  const char* fn = "gaussian_ot";
  const StreamArg s = read_stream(stream);
  Placement where;
  std::vector<Array> keep;
  otgpu::GaussianBatch src, dst;
  src.mean = to_view(mean1, "mean1", where, keep);
  src.cov = to_view(cov1, "cov1", where, keep);
  dst.mean = to_view(mean2, "mean2", where, keep);
  dst.cov = to_view(cov2, "cov2", where, keep);
  otgpu::GaussianOTOptions o;
  o.eps = eps;
  o.want_map = want_map;
  o.backend = otgpu::parse_backend(backend);
  o.device = resolve_device(where, device_opt, fn);
  const bool ctx = use_context(where, s.given, o.backend, fn);
  otgpu::GaussianOTResult r;
  {
    nb::gil_scoped_release nogil;
    if (ctx) {
      ContextLease lease(o.device, s.handle);
      r = otgpu::gaussian_ot(*lease, src, dst, o);
    } else {
      r = otgpu::gaussian_ot(src, dst, o);
    }
  }
  // Batched when any input has its batch axis.
  const bool batched =
      src.mean.rank == 2 || dst.mean.rank == 2 || src.cov.rank == 3 || dst.cov.rank == 3;
  const auto B = static_cast<std::size_t>(r.batch);
  const auto d = static_cast<std::size_t>(r.d);
  auto scalar_or = [&](std::vector<double>&& v) -> nb::object {
    if (v.empty()) return nb::none();
    if (batched) return to_numpy(std::move(v), {B}, false);
    return nb::float_(v[0]);
  };
  nb::dict out;
  out["w2_squared"] = scalar_or(std::move(r.w2_squared));
  out["bures_squared"] = scalar_or(std::move(r.bures_squared));
  out["entropic"] = scalar_or(std::move(r.entropic));
  if (r.map_matrix.empty()) {
    out["map_matrix"] = nb::none();
  } else {
    out["map_matrix"] = batched ? to_numpy(std::move(r.map_matrix), {B, d, d}, false)
                                : to_numpy(std::move(r.map_matrix), {d, d}, false);
  }
  out["backend"] = std::string(otgpu::to_string(r.backend));
  out["time_ms"] = r.time_ms;
  return out;
}

}  // namespace

void bind_gaussian(nb::module_& m) {
  m.def("gaussian_ot", &run_gaussian, nb::arg("mean1"), nb::arg("cov1"), nb::arg("mean2"),
        nb::arg("cov2"), nb::arg("eps"), nb::arg("want_map"), nb::arg("backend"), nb::arg("device"),
        nb::arg("stream").none());
}

}  // namespace otgpu_py
