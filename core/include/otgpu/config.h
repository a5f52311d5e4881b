// Build-wide macros shared by host and device code. Never includes a CUDA header.
#pragma once

#if defined(__CUDACC__)
#define OTGPU_HOST_DEVICE __host__ __device__
#define OTGPU_FORCEINLINE __forceinline__
#else
#define OTGPU_HOST_DEVICE
#define OTGPU_FORCEINLINE inline
#endif

#define OTGPU_VERSION_MAJOR 0
#define OTGPU_VERSION_MINOR 1
#define OTGPU_VERSION_PATCH 0
