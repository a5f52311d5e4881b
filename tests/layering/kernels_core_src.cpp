// Must not compile: kernels/ sees core's public headers only, not core/src.
#include "validate.h"

int otgpu_layering_kernels_core_src() { return 0; }
