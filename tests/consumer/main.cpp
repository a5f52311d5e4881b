// A downstream program: includes only public headers, links otgpu::otgpu.
#include <otgpu/otgpu.h>

#include <cmath>
#include <cstdio>

int main() {
  // Two Diracs: x = 0, y = 1, cost |x - y|^2 = 1, any eps: OT_eps = 1.
  const double x[1] = {0.0}, y[1] = {1.0};
  otgpu::SinkhornProblem p;
  p.x = otgpu::TensorView::host(x, {1, 1});
  p.y = otgpu::TensorView::host(y, {1, 1});
  otgpu::SinkhornOptions o;
  o.eps = 0.1;
  o.backend = otgpu::Backend::cpu;
  const auto r = otgpu::sinkhorn(p, o);
  std::printf("ot_eps=%.12f\n", r.problems[0].ot_eps);
  return std::abs(r.problems[0].ot_eps - 1.0) < 1e-9 ? 0 : 1;
}
