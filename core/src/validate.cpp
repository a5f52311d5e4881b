// PLACEHOLDER — replaced by the CPU-solver work (validation of Sinkhorn inputs).
#include "validate.h"

#include "otgpu/error.h"

namespace otgpu::detail {

SinkhornShape validate_sinkhorn(const SinkhornProblem&, const SinkhornOptions&) {
  throw Error("validate_sinkhorn: not implemented yet");
}

}  // namespace otgpu::detail
