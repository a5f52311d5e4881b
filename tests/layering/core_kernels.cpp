// Must not compile: core/ may not include kernels/ headers.
#include "otgpu_kernels/cuda_check.h"

int otgpu_layering_core_kernels() { return 0; }
