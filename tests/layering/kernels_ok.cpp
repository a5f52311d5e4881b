// Control: what the kernels layer may see (core's public headers, kernels/include).
#include "otgpu/types.h"

#if !__has_include("otgpu_kernels/cuda_check.h") || !__has_include("otgpu/detail/sinkhorn_rules.h")
#error "kernels/include and core/include must be visible to the kernels layer"
#endif

int otgpu_layering_kernels_ok() { return 0; }
