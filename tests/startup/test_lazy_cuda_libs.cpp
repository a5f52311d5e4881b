// Start-up cost (issue 13): a CPU-only run must not map cuBLAS or cuSOLVER (~265 MB);
// they are loaded when a GPU path first needs them (kernels/src/cuda_libs.cpp). Runs
// a CPU Sinkhorn and a CPU sliced solve, then reads /proc/self/maps. With a usable
// device it then runs the GPU sliced path (which needs cuBLAS) and checks that the
// library is loaded on demand. Own executable: no other test may have loaded them.
// Exit 0: pass, 1: fail, 77: skipped (not Linux).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "otgpu/otgpu.h"

namespace {

/// The mapped files of this process whose path contains `name`.
std::vector<std::string> mappings(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::vector<std::string> out;
  for (std::string line; std::getline(maps, line);) {
    if (line.find(name) != std::string::npos) out.push_back(line);
  }
  return out;
}

bool none_mapped(const char* when) {
  bool ok = true;
  for (const char* lib : {"libcublas", "libcusolver"}) {
    const auto found = mappings(lib);
    if (!found.empty()) {
      std::fprintf(stderr, "FAIL %s: %s is mapped: %s\n", when, lib, found.front().c_str());
      ok = false;
    }
  }
  return ok;
}

}  // namespace

int main() {
#ifndef __linux__
  std::puts("skipped: /proc/self/maps is Linux only");
  return 77;
#else
  if (mappings("[stack]").empty()) {
    std::fprintf(stderr, "FAIL: /proc/self/maps is unreadable or empty\n");
    return 1;
  }
  bool ok = none_mapped("at start");
  const std::vector<double> x = {0.0, 0.1, 0.4, 0.9, 1.3, 1.7};
  const std::vector<double> y = {0.2, 0.5, 0.8, 1.1, 1.6};
  otgpu::SinkhornProblem p;
  p.x = otgpu::TensorView::host(x.data(), {6, 1});
  p.y = otgpu::TensorView::host(y.data(), {5, 1});
  otgpu::SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  o.eps = 0.1;
  const auto r = otgpu::sinkhorn(p, o);
  otgpu::SlicedProblem sp;
  sp.x = otgpu::TensorView::host(x.data(), {3, 2});
  sp.y = otgpu::TensorView::host(x.data(), {3, 2});
  otgpu::SlicedOptions so;
  so.backend = otgpu::Backend::cpu;
  const auto s = otgpu::sliced_wasserstein(sp, so);
  const bool cuda = otgpu::cuda_available();  // the CUDA runtime may load; cuBLAS must not
  ok = none_mapped("after CPU solves") && ok;
  std::printf("cpu sinkhorn ot_eps %.6f, sliced %.6f, cuda available %d\n", r.problems[0].ot_eps,
              s.value[0], cuda ? 1 : 0);
  if (cuda) {
    so.backend = otgpu::Backend::cuda;
    (void)otgpu::sliced_wasserstein(sp, so);  // projects with cublasSgemm
    if (mappings("libcublas").empty()) {
      std::fprintf(stderr, "FAIL: the CUDA sliced path ran but libcublas is not mapped\n");
      ok = false;
    }
  }
  std::puts(ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
#endif
}
