// W5: the machine's own limits, measured by the runner itself.
#pragma once

#include <string>

namespace otgpu::bench {

struct Limits {
  double exp_per_s = 0;
  double fma_flop_per_s = 0;
  double copy_bytes_per_s = 0;
  double pair_per_s = 0;       ///< CPU only: the solver's row sweep with every exp skipped
  double tf32_flop_per_s = 0;  ///< GPU only: mma.sync TF32 (tensor_probe.h)
  double bf16_flop_per_s = 0;  ///< GPU only: mma.sync bf16 (tensor_probe.h)
  const char* fma_isa = "";    ///< CPU only: the vector build the FMA probe ran
};

/// CPU limits with all OpenMP threads (fp64 exp, fp64 FMA, memcpy, pair sweep). ~1 s.
Limits measure_cpu_limits();
std::string cpu_model_name();

struct GpuInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  int sm_clock_mhz = 0;  ///< clock of the run (current SM clock where readable, else max)
  int mem_clock_mhz = 0;
  int runtime_version = 0, driver_version = 0;
  double global_mem_gib = 0;
};

/// False (and no exception) when the build has no CUDA or no device is usable.
bool query_gpu(int device, GpuInfo& info);
/// GPU limits: ex2.approx.f32 throughput (MUFU), fp32 FMA throughput, copy kernel
/// bandwidth (bytes read + written), mma.sync TF32 and bf16 throughput
/// (tensor_probe.h). Each is the median of several timed launches.
Limits measure_gpu_limits(int device);

}  // namespace otgpu::bench
