// Shared pieces of the otgpu._otgpu extension: DLPack arrays in (as TensorViews, no
// copy), NumPy arrays out, the typed option readers, and the cached GpuContexts.
//
// Arrays come in as nb::ndarray<nb::ro> (nanobind's DLPack / buffer-protocol import):
// the data pointer, the shape and the strides (in elements) are read as they are and
// become a TensorView in host or device memory; nothing is copied. Results of the
// C++ API are host vectors and go out as NumPy arrays that own them; the Python layer
// (otgpu/_arrays.py) turns them into the caller's kind of array on the caller's device.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "otgpu/otgpu.h"

namespace otgpu_py {

namespace nb = nanobind;
using Array = nb::ndarray<nb::ro>;

/// Where the arrays of one call live. All present arrays must share one space (and,
/// for device memory, one device); the library checks the former, we the latter.
struct Placement {
  bool any_device = false;
  int device = -1;       ///< CUDA ordinal of the device arrays
  bool float32 = false;  ///< the first array (x, or cost) is fp32: outputs follow it
  bool first_seen = false;
};

/// A TensorView of `obj` (None: an absent view). `obj` is anything nanobind imports as
/// an ndarray: an object with __dlpack__ (NumPy, torch, JAX, CuPy) or the buffer
/// protocol; anything else is passed through numpy.asarray first. The view borrows
/// the memory: `keep` receives the imported array, which must outlive the view.
/// Throws DTypeError (not fp32/fp64), ShapeError (rank, empty, negative strides) or
/// InvalidArgument (memory other than CPU/CUDA) naming `name`.
otgpu::TensorView to_view(nb::handle obj, const char* name, Placement& where,
                          std::vector<Array>& keep);

/// The geometry of one call: a cost matrix `cost` (kind matrix), or point clouds x and
/// y with the point cost `kind`. `x_name`/`y_name` are the caller's names of x and y
/// (messages). `batched`: the first array has a batch axis (outputs keep it).
struct Geometry {
  otgpu::TensorView x, y, cost;
  otgpu::CostKind kind = otgpu::CostKind::sqeuclidean;
  bool batched = false;
};
Geometry bind_geometry(nb::handle x, nb::handle y, nb::handle cost, otgpu::CostKind kind,
                       const char* fn, const char* x_name, const char* y_name, Placement& where,
                       std::vector<Array>& keep);

/// Whether a call runs on the cached context of (device, stream): device arrays do
/// (backend cpu cannot read them: InvalidArgument), and so does an explicit stream with
/// a CUDA backend (or automatic with a GPU present).
bool use_context(const Placement& where, bool stream_given, otgpu::Backend backend, const char* fn);

/// A device address handed over from Python as an int (data_ptr(), .data.ptr).
template <class T>
T* device_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);  // NOLINT: an address the framework gave us
}

/// A NumPy array owning `values`, with `shape` (its product must be values.size()),
/// as float32 when `float32` (a converted copy), else float64 (the vector itself).
nb::object to_numpy(std::vector<double>&& values, std::initializer_list<std::size_t> shape,
                    bool float32);
nb::object to_numpy_int64(std::vector<std::int64_t>&& values,
                          std::initializer_list<std::size_t> shape);

// ---- Options (keyword arguments) with type errors that name the option ----
double opt_double(nb::handle v, const char* fn, const char* name);
double opt_double_or_auto(nb::handle v, const char* fn, const char* name);  // None: kAuto
int opt_int(nb::handle v, const char* fn, const char* name);
bool opt_bool(nb::handle v, const char* fn, const char* name);
std::string opt_str(nb::handle v, const char* fn, const char* name);
[[noreturn]] void unknown_option(const char* fn, std::string_view name);
/// Host fp32/fp64 array (any rank) read into doubles in C order (f_init, g_init).
std::vector<double> opt_host_vector(nb::handle v, const char* fn, const char* name);

/// The device a call runs on: the device arrays' ordinal, or options `device` (which
/// must agree with it when both are given).
int resolve_device(const Placement& where, int option_device, const char* fn);

/// A cached GpuContext for (device, stream), held exclusively for one call. Contexts
/// are created on first use and kept for the life of the process (or until
/// clear_contexts()): after the first call of a size, calls allocate nothing. Take
/// the lease with the GIL released: a holder may be waiting for the GIL in a progress
/// callback. Construction throws DeviceUnavailable in a build without CUDA.
class ContextLease {
 public:
  ContextLease(int device, std::uintptr_t stream);
  otgpu::GpuContext& operator*() const noexcept { return *ctx_; }

 private:
  std::unique_lock<std::mutex> lock_;
  otgpu::GpuContext* ctx_ = nullptr;
};
/// Drops every cached context (each waits for its stream first). Number dropped.
std::size_t clear_contexts();
std::size_t context_count();

/// Stream argument as passed by the Python layer: `given` false means "no stream
/// asked for" (the plain entry points, legacy default stream), else `handle` is a
/// cudaStream_t value (0: legacy default; 1 and 2: the legacy and per-thread handles).
struct StreamArg {
  bool given = false;
  std::uintptr_t handle = 0;
};
StreamArg read_stream(nb::handle stream);

/// The nested `sinkhorn=` option (a dict of the sinkhorn keyword options, without
/// progress) of couple and minibatch_ot, as otgpu::SinkhornOptions; None: defaults.
otgpu::SinkhornOptions nested_sinkhorn_options(nb::handle v, const char* fn);

void bind_sinkhorn(nb::module_& m);
void bind_assignment(nb::module_& m);
void bind_sliced(nb::module_& m);
void bind_gaussian(nb::module_& m);

}  // namespace otgpu_py
