# OTGPU_MPI / OTGPU_NCCL = AUTO|ON|OFF -> OTGPU_HAS_MPI / OTGPU_HAS_NCCL, like OTGPU_CUDA.
# MPI comes from CMake's FindMPI (MPI::MPI_CXX); NCCL ships with the CUDA toolkit (or a
# separate package) and has no CMake module of its own, so its header and library are
# looked up in the toolkit's directories. Without them the communicators that need them
# compile as stubs that throw DeviceUnavailable naming the missing option.
set(OTGPU_MPI AUTO CACHE STRING "MPI communicator (multi-process ranks): AUTO, ON, OFF")
set_property(CACHE OTGPU_MPI PROPERTY STRINGS AUTO ON OFF)
set(OTGPU_NCCL AUTO CACHE STRING "NCCL communicator (device collectives; needs CUDA): AUTO, ON, OFF")
set_property(CACHE OTGPU_NCCL PROPERTY STRINGS AUTO ON OFF)

set(OTGPU_HAS_MPI OFF)
string(TOUPPER "${OTGPU_MPI}" _otgpu_mpi)
if(NOT _otgpu_mpi STREQUAL "OFF")
  if(_otgpu_mpi STREQUAL "ON")
    find_package(MPI COMPONENTS CXX REQUIRED)
  else()
    find_package(MPI COMPONENTS CXX QUIET)
  endif()
  if(MPI_CXX_FOUND)
    set(OTGPU_HAS_MPI ON)
  else()
    message(STATUS "otgpu: no MPI found; the MPI communicator is a stub")
  endif()
endif()

set(OTGPU_HAS_NCCL OFF)
string(TOUPPER "${OTGPU_NCCL}" _otgpu_nccl)
if(NOT _otgpu_nccl STREQUAL "OFF")
  if(OTGPU_HAS_CUDA)
    find_path(OTGPU_NCCL_INCLUDE_DIR nccl.h
              HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}/include)
    find_library(OTGPU_NCCL_LIBRARY nccl
                 HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib64)
  endif()
  if(OTGPU_NCCL_INCLUDE_DIR AND OTGPU_NCCL_LIBRARY)
    # Used by path (not an imported target) so that the exported static library
    # carries it into consumers without a find module of ours.
    set(OTGPU_HAS_NCCL ON)
  elseif(_otgpu_nccl STREQUAL "ON")
    message(FATAL_ERROR "OTGPU_NCCL=ON but nccl.h / libnccl were not found "
                        "(needs the CUDA backend; looked in ${CUDAToolkit_INCLUDE_DIRS})")
  else()
    message(STATUS "otgpu: no NCCL found (or CUDA off); the NCCL communicator is a stub")
  endif()
endif()
message(STATUS "otgpu: MPI ${OTGPU_HAS_MPI}, NCCL ${OTGPU_HAS_NCCL}")
