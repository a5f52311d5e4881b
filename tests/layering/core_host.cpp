// Must not compile: core/ may not include host/ headers.
#include "otgpu_host/gpu_runtime.h"

int otgpu_layering_core_host() { return 0; }
