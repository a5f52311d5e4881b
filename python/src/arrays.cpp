// DLPack arrays in, NumPy arrays out, option readers, cached GpuContexts.
#include <fmt/format.h>

#include <map>
#include <utility>

#include "py_common.h"

namespace otgpu_py {

namespace {

// DLPack device types (dlpack.h DLDeviceType) the library can read.
constexpr int kDLCPU = 1;
constexpr int kDLCUDA = 2;
constexpr int kDLCUDAHost = 3;      // pinned host memory: host-readable
constexpr int kDLCUDAManaged = 13;  // managed memory: read as device memory

std::string dtype_name(nb::dlpack::dtype t) {
  const char* kind = "unknown";
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      return "bool";
    default:
      break;
  }
  return t.lanes > 1 ? fmt::format("{}{}x{}", kind, t.bits, t.lanes)
                     : fmt::format("{}{}", kind, t.bits);
}

bool importable(nb::handle obj) {
  return nb::hasattr(obj, "__dlpack__") || PyObject_CheckBuffer(obj.ptr());
}

}  // namespace

otgpu::TensorView to_view(nb::handle obj, const char* name, Placement& where,
                          std::vector<Array>& keep) {
  otgpu::TensorView v;
  if (obj.is_none()) return v;
  Array arr;
  if (!nb::try_cast(obj, arr)) {
    if (importable(obj)) {
      // nanobind refuses what it cannot describe as an element-strided view (byte
      // strides that are not a multiple of the element size, unsupported exports).
      throw otgpu::ShapeError(fmt::format(
          "{}: the {} could not be imported through DLPack or the buffer protocol as an "
          "element-strided array (strides must be non-negative multiples of the element "
          "size); pass a contiguous copy",
          name, nb::type_name(obj.type()).c_str()));
    }
    // Lists, tuples, scalars: NumPy makes the array (a copy, host memory).
    nb::object np = nb::module_::import_("numpy");
    nb::object converted = np.attr("asarray")(obj);
    if (!nb::try_cast(converted, arr)) {
      throw otgpu::DTypeError(
          fmt::format("{}: cannot read a {} as an array", name, nb::type_name(obj.type()).c_str()));
    }
  }
  const auto dt = arr.dtype();
  if (dt == nb::dtype<float>()) {
    v.dtype = otgpu::DType::f32;
  } else if (dt == nb::dtype<double>()) {
    v.dtype = otgpu::DType::f64;
  } else {
    throw otgpu::DTypeError(
        fmt::format("{}: dtype {} not supported (float32 or float64)", name, dtype_name(dt)));
  }
  const int dev = arr.device_type();
  if (dev == kDLCPU || dev == kDLCUDAHost) {
    v.space = otgpu::MemorySpace::host;
  } else if (dev == kDLCUDA || dev == kDLCUDAManaged) {
    v.space = otgpu::MemorySpace::device;
    if (where.any_device && where.device != arr.device_id()) {
      throw otgpu::InvalidArgument(
          fmt::format("{}: on CUDA device {} while another input is on CUDA device {}; all "
                      "inputs of one call must be on one device",
                      name, arr.device_id(), where.device));
    }
    where.any_device = true;
    where.device = arr.device_id();
  } else {
    throw otgpu::InvalidArgument(fmt::format(
        "{}: memory of DLPack device type {} not supported (CPU or CUDA memory)", name, dev));
  }
  const auto ndim = arr.ndim();
  if (ndim < 1 || ndim > static_cast<std::size_t>(otgpu::TensorView::kMaxRank)) {
    throw otgpu::ShapeError(fmt::format("{}: rank {} not supported (1 to {})", name, ndim,
                                        otgpu::TensorView::kMaxRank));
  }
  v.rank = static_cast<int>(ndim);
  for (std::size_t k = 0; k < ndim; ++k) {
    v.shape[k] = static_cast<std::int64_t>(arr.shape(k));
    v.strides[k] = arr.stride(k);
    if (v.strides[k] < 0) {
      throw otgpu::ShapeError(
          fmt::format("{}: stride {} in dimension {} is negative (a reversed view); pass a copy",
                      name, v.strides[k], k));
    }
  }
  if (arr.size() == 0) {
    throw otgpu::ShapeError(fmt::format("{}: empty array {}", name, v.describe()));
  }
  v.data = arr.data();
  if (!where.first_seen) {
    where.first_seen = true;
    where.float32 = v.dtype == otgpu::DType::f32;
  }
  keep.push_back(std::move(arr));
  return v;
}

nb::object to_numpy(std::vector<double>&& values, std::initializer_list<std::size_t> shape,
                    bool float32) {
  if (float32) {
    auto* owned = new std::vector<float>(values.begin(), values.end());
    nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    return nb::cast(
        nb::ndarray<nb::numpy, float>(owned->data(), shape.size(), shape.begin(), owner));
  }
  auto* owned = new std::vector<double>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  return nb::cast(
      nb::ndarray<nb::numpy, double>(owned->data(), shape.size(), shape.begin(), owner));
}

nb::object to_numpy_int64(std::vector<std::int64_t>&& values,
                          std::initializer_list<std::size_t> shape) {
  auto* owned = new std::vector<std::int64_t>(std::move(values));
  nb::capsule owner(owned,
                    [](void* p) noexcept { delete static_cast<std::vector<std::int64_t>*>(p); });
  return nb::cast(
      nb::ndarray<nb::numpy, std::int64_t>(owned->data(), shape.size(), shape.begin(), owner));
}

// ---- Options ----

namespace {

bool is_int(nb::handle v) { return PyLong_Check(v.ptr()) && !PyBool_Check(v.ptr()); }

[[noreturn]] void option_type_error(nb::handle v, const char* fn, const char* name,
                                    const char* expected) {
  throw nb::type_error(fmt::format("{}: option {} must be {}, got {}", fn, name, expected,
                                   nb::type_name(v.type()).c_str())
                           .c_str());
}

}  // namespace

double opt_double(nb::handle v, const char* fn, const char* name) {
  if (PyFloat_Check(v.ptr()) || is_int(v)) return PyFloat_AsDouble(v.ptr());
  // NumPy scalars and 0-d arrays convert through __float__.
  if (!PyBool_Check(v.ptr()) && nb::hasattr(v, "__float__") && !nb::hasattr(v, "__len__")) {
    return nb::cast<double>(v.attr("__float__")());
  }
  option_type_error(v, fn, name, "a number");
}

double opt_double_or_auto(nb::handle v, const char* fn, const char* name) {
  return v.is_none() ? otgpu::kAuto : opt_double(v, fn, name);
}

int opt_int(nb::handle v, const char* fn, const char* name) {
  if (!is_int(v)) {
    if (nb::hasattr(v, "__index__") && !PyBool_Check(v.ptr())) {
      return opt_int(v.attr("__index__")(), fn, name);
    }
    option_type_error(v, fn, name, "an int");
  }
  const long long x = PyLong_AsLongLong(v.ptr());
  if (x == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw otgpu::InvalidArgument(fmt::format("{}: option {} out of range", fn, name));
  }
  if (x < INT32_MIN || x > INT32_MAX) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: option {} = {} out of the int range", fn, name, x));
  }
  return static_cast<int>(x);
}

bool opt_bool(nb::handle v, const char* fn, const char* name) {
  if (!PyBool_Check(v.ptr())) {
    if (nb::type_name(v.type()).c_str() == std::string_view("numpy.bool")) {
      return nb::cast<bool>(v.attr("__bool__")());
    }
    option_type_error(v, fn, name, "a bool");
  }
  return v.ptr() == Py_True;
}

std::string opt_str(nb::handle v, const char* fn, const char* name) {
  if (!PyUnicode_Check(v.ptr())) option_type_error(v, fn, name, "a str");
  return nb::cast<std::string>(v);
}

void unknown_option(const char* fn, std::string_view name) {
  throw nb::type_error(
      fmt::format("{}() got an unexpected keyword argument '{}'", fn, name).c_str());
}

std::vector<double> opt_host_vector(nb::handle v, const char* fn, const char* name) {
  Placement where;
  std::vector<Array> keep;
  const otgpu::TensorView view = to_view(v, name, where, keep);
  if (view.space != otgpu::MemorySpace::host) {
    throw otgpu::InvalidArgument(fmt::format("{}: {} must be in host memory", fn, name));
  }
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(view.numel()));
  const std::int64_t d0 = view.dim(0);
  const std::int64_t d1 = view.rank > 1 ? view.dim(1) : 1;
  const std::int64_t d2 = view.rank > 2 ? view.dim(2) : 1;
  for (std::int64_t i = 0; i < d0; ++i) {
    for (std::int64_t j = 0; j < d1; ++j) {
      for (std::int64_t k = 0; k < d2; ++k) out.push_back(otgpu::load_as_double(view, i, j, k));
    }
  }
  return out;
}

Geometry bind_geometry(nb::handle x, nb::handle y, nb::handle cost, otgpu::CostKind kind,
                       const char* fn, const char* x_name, const char* y_name, Placement& where,
                       std::vector<Array>& keep) {
  Geometry g;
  if (!cost.is_none()) {
    if (!x.is_none() || !y.is_none()) {
      throw otgpu::InvalidArgument(
          fmt::format("{}: give either point clouds x and y or a cost matrix, not both", fn));
    }
    g.cost = to_view(cost, "cost", where, keep);
    g.kind = otgpu::CostKind::matrix;
    g.batched = g.cost.rank == 3;
    return g;
  }
  if (x.is_none() || y.is_none()) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: needs point clouds x and y, or a cost matrix cost=", fn));
  }
  if (kind == otgpu::CostKind::matrix) {
    throw otgpu::InvalidArgument(
        fmt::format("{}: cost_kind matrix needs cost=, not point clouds", fn));
  }
  g.x = to_view(x, x_name, where, keep);
  g.y = to_view(y, y_name, where, keep);
  g.kind = kind;
  g.batched = g.x.rank == 3;
  return g;
}

bool use_context(const Placement& where, bool stream_given, otgpu::Backend backend,
                 const char* fn) {
  if (where.any_device) {
    if (backend == otgpu::Backend::cpu) {
      throw otgpu::InvalidArgument(fmt::format(
          "{}: backend cpu cannot read device memory (the inputs are on CUDA device {})", fn,
          where.device));
    }
    return true;
  }
  if (!stream_given || backend == otgpu::Backend::cpu) return false;
  return backend == otgpu::Backend::cuda || otgpu::cuda_available();
}

int resolve_device(const Placement& where, int option_device, const char* fn) {
  if (where.any_device) {
    if (option_device >= 0 && option_device != where.device) {
      throw otgpu::InvalidArgument(fmt::format(
          "{}: device = {} but the inputs are on CUDA device {}", fn, option_device, where.device));
    }
    return where.device;
  }
  return option_device >= 0 ? option_device : 0;
}

StreamArg read_stream(nb::handle stream) {
  StreamArg s;
  if (stream.is_none()) return s;
  if (!is_int(stream)) {
    throw nb::type_error(fmt::format("stream: expected None or an int handle, got {}",
                                     nb::type_name(stream.type()).c_str())
                             .c_str());
  }
  const unsigned long long h = PyLong_AsUnsignedLongLong(stream.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw otgpu::InvalidArgument("stream: a stream handle must be a non-negative int");
  }
  s.given = true;
  s.handle = static_cast<std::uintptr_t>(h);
  return s;
}

// ---- Cached contexts ----

namespace {

struct CachedContext {
  std::mutex mu;
  std::unique_ptr<otgpu::GpuContext> ctx;
};

using ContextKey = std::pair<int, std::uintptr_t>;

// Never destroyed: contexts outliving the interpreter's shutdown must not call into a
// CUDA driver that may already be unloading (clear_contexts() releases them earlier).
std::mutex& cache_mutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<ContextKey, std::unique_ptr<CachedContext>>& cache() {
  static auto* c = new std::map<ContextKey, std::unique_ptr<CachedContext>>;
  return *c;
}

}  // namespace

ContextLease::ContextLease(int device, std::uintptr_t stream) {
  CachedContext* entry = nullptr;
  {
    std::lock_guard<std::mutex> guard(cache_mutex());
    const ContextKey key{device, stream};
    auto it = cache().find(key);
    if (it == cache().end()) {
      auto fresh = std::make_unique<CachedContext>();
      // A cudaStream_t handed over as an integer (0: the legacy default stream).
      fresh->ctx = std::make_unique<otgpu::GpuContext>(device, reinterpret_cast<void*>(stream));
      it = cache().emplace(key, std::move(fresh)).first;
    }
    entry = it->second.get();
  }
  lock_ = std::unique_lock<std::mutex>(entry->mu);
  ctx_ = entry->ctx.get();
}

std::size_t clear_contexts() {
  std::lock_guard<std::mutex> guard(cache_mutex());
  const std::size_t n = cache().size();
  for (auto& kv : cache()) {
    std::lock_guard<std::mutex> in_use(kv.second->mu);  // wait for a call still running
    kv.second->ctx.reset();
  }
  cache().clear();
  return n;
}

std::size_t context_count() {
  std::lock_guard<std::mutex> guard(cache_mutex());
  return cache().size();
}

}  // namespace otgpu_py
