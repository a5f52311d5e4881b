// W5's tensor-core probe: the mma.sync throughput this device reaches (bench/cuda/
// tensor_probe.cu), the measured ceiling of the W1tc rows. Plain C++ header.
#pragma once

namespace otgpu::bench {

/// Dense matrix rates in FLOP/s (2 per multiply-add), 0 when not measured.
struct TensorRates {
  double tf32_flop_per_s = 0;  ///< mma.sync m16n8k8 .tf32, fp32 accumulate
  double bf16_flop_per_s = 0;  ///< mma.sync m16n8k16 .bf16, fp32 accumulate
};

/// Times a register-only loop of independent mma.sync per warp (no memory traffic,
/// 8 accumulators per warp, 32 warps per SM) on `device`: the issue-limited peak of
/// the instruction the tensor-core Sinkhorn kernels use. Needs a CUDA build and device.
TensorRates measure_tensor_rates(int device);

/// The published dense TF32 rate of the H200 SXM (494.7 TFLOP/s): the W1tc label and
/// the fallback when the probe did not run.
constexpr double kPublishedTf32FlopPerS = 494.7e12;

}  // namespace otgpu::bench
