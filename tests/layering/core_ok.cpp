// Control: what the core layer may see (core/include and core/src).
#include "otgpu/types.h"

#if !__has_include("validate.h")
#error "core/src must be visible to the core layer"
#endif

int otgpu_layering_core_ok() { return 0; }
