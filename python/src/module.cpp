// otgpu._otgpu: the module, the translation of the library's typed errors, and the
// small module-level functions. The solvers are bound in bind_*.cpp, one per header.
#include <string>

#include "py_common.h"

namespace otgpu_py {
namespace {

// The Python classes of otgpu/_errors.py, looked up once at import and kept for the
// life of the process (never released: the translator may run during shutdown).
struct ErrorClasses {
  PyObject* error = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* shape = nullptr;
  PyObject* dtype = nullptr;
  PyObject* non_finite = nullptr;
  PyObject* infeasible = nullptr;
  PyObject* device_unavailable = nullptr;
  PyObject* cuda = nullptr;
  PyObject* out_of_memory = nullptr;
  PyObject* io = nullptr;
};
ErrorClasses g_errors;

PyObject* error_class(nb::module_& errors, const char* name) {
  return nb::object(errors.attr(name)).release().ptr();
}

void translate(const std::exception_ptr& p, void*) {
  // Most derived first: ShapeError, DTypeError, NonFiniteInput and Infeasible are
  // InvalidArguments.
  try {
    std::rethrow_exception(p);
  } catch (const otgpu::ShapeError& e) {
    PyErr_SetString(g_errors.shape, e.what());
  } catch (const otgpu::DTypeError& e) {
    PyErr_SetString(g_errors.dtype, e.what());
  } catch (const otgpu::NonFiniteInput& e) {
    PyErr_SetString(g_errors.non_finite, e.what());
  } catch (const otgpu::Infeasible& e) {
    PyErr_SetString(g_errors.infeasible, e.what());
  } catch (const otgpu::InvalidArgument& e) {
    PyErr_SetString(g_errors.invalid_argument, e.what());
  } catch (const otgpu::DeviceUnavailable& e) {
    PyErr_SetString(g_errors.device_unavailable, e.what());
  } catch (const otgpu::CudaError& e) {
    nb::object exc = nb::borrow(g_errors.cuda)(e.what(), e.code());
    PyErr_SetObject(g_errors.cuda, exc.ptr());
  } catch (const otgpu::OutOfMemory& e) {
    PyErr_SetString(g_errors.out_of_memory, e.what());
  } catch (const otgpu::IoError& e) {
    PyErr_SetString(g_errors.io, e.what());
  } catch (const otgpu::Error& e) {
    PyErr_SetString(g_errors.error, e.what());
  }
}

// Raises the C++ error `kind` with `message`, so that tests can check the mapping of
// the errors no input on a CPU machine can provoke (CudaError, OutOfMemory, IoError).
void throw_for_test(const std::string& kind, const std::string& message) {
  if (kind == "Error") throw otgpu::Error(message);
  if (kind == "InvalidArgument") throw otgpu::InvalidArgument(message);
  if (kind == "ShapeError") throw otgpu::ShapeError(message);
  if (kind == "DTypeError") throw otgpu::DTypeError(message);
  if (kind == "NonFiniteInput") throw otgpu::NonFiniteInput(message);
  if (kind == "Infeasible") throw otgpu::Infeasible(message);
  if (kind == "DeviceUnavailable") throw otgpu::DeviceUnavailable(message);
  if (kind == "CudaError") throw otgpu::CudaError(message, 2);
  if (kind == "OutOfMemory") throw otgpu::OutOfMemory(message);
  if (kind == "IoError") throw otgpu::IoError(message);
  throw nb::value_error(("_throw_for_test: unknown kind " + kind).c_str());
}

}  // namespace
}  // namespace otgpu_py

NB_MODULE(_otgpu, m) {
  namespace nb = nanobind;
  using namespace otgpu_py;
  m.doc() = "Native part of the otgpu package (use the functions of `otgpu`).";

  nb::module_ errors = nb::module_::import_("otgpu._errors");
  g_errors.error = error_class(errors, "Error");
  g_errors.invalid_argument = error_class(errors, "InvalidArgument");
  g_errors.shape = error_class(errors, "ShapeError");
  g_errors.dtype = error_class(errors, "DTypeError");
  g_errors.non_finite = error_class(errors, "NonFiniteInput");
  g_errors.infeasible = error_class(errors, "Infeasible");
  g_errors.device_unavailable = error_class(errors, "DeviceUnavailable");
  g_errors.cuda = error_class(errors, "CudaError");
  g_errors.out_of_memory = error_class(errors, "OutOfMemory");
  g_errors.io = error_class(errors, "IoError");
  nb::register_exception_translator(translate);

  m.attr("__version__") = std::to_string(OTGPU_VERSION_MAJOR) + "." +
                          std::to_string(OTGPU_VERSION_MINOR) + "." +
                          std::to_string(OTGPU_VERSION_PATCH);
  m.attr("built_with_cuda") = static_cast<bool>(OTGPU_PY_HAS_CUDA);
  m.def("cuda_available", &otgpu::cuda_available,
        "True when this build has CUDA and at least one device is usable.");
  m.def("clear_contexts", &clear_contexts,
        "Releases the cached GPU contexts (one per device and stream); each first waits for "
        "its stream. Returns how many were released. Not to be called while another thread "
        "runs a solve.");
  m.def("context_count", &context_count, "Number of cached GPU contexts.");
  m.def("_throw_for_test", &throw_for_test);

  bind_sinkhorn(m);
  bind_sliced(m);
  bind_gaussian(m);
  bind_assignment(m);
}
