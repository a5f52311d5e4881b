// Masses of device-memory weights, read back to the host (the unbalanced
// divergence's mass term eps/2 (m(a) - m(b))^2 needs them; see sinkhorn_api.cpp).
#include "cpu_numeric.h"
#include "otgpu_host/cuda_backend.h"
#include "view_staging.h"

namespace otgpu::cuda_backend {

std::vector<double> weight_masses(const TensorView& w, bool batched, std::int64_t batch,
                                  int device) {
  if (!w.present()) return {1.0};
  DeviceRestore restore;
  runtime::Context& ctx = runtime::thread_context(device);
  ctx.activate();
  RawLayout raw;
  raw.add(w);
  const unsigned char* pin = read_back(ctx, {&w}, raw);
  TensorView h = w;
  h.data = pin + raw.offset[0];
  h.space = MemorySpace::host;
  const std::int64_t rows = batched ? batch : 1;
  const std::int64_t len = batched ? h.dim(1) : h.dim(0);
  std::vector<double> out(static_cast<std::size_t>(rows));
  for (std::int64_t b = 0; b < rows; ++b) {
    cpu::CompensatedSum sum;
    for (std::int64_t i = 0; i < len; ++i) sum.add(cpu::load_problem_element(h, batched, b, i));
    out[static_cast<std::size_t>(b)] = sum.value();
  }
  return out;
}

}  // namespace otgpu::cuda_backend
