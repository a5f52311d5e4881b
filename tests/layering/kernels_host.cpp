// Must not compile: kernels/ may not include host/ headers.
#include "otgpu_host/backend.h"

int otgpu_layering_kernels_host() { return 0; }
