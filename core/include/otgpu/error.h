// Typed errors. Every public entry point validates its arguments and throws one of
// these with a message that names the argument and the offending value.
#pragma once

#include <stdexcept>
#include <string>

namespace otgpu {

/// Base of every error libotgpu throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A caller-supplied value is wrong (size, eps, weights, option...).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// Tensor shapes or strides are inconsistent with each other or with the problem.
class ShapeError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// Element type not supported where it was given (e.g. integer .npy data).
class DTypeError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// Input data holds NaN or infinity, or negative weights.
class NonFiniteInput : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// The allowed pairs of an assignment problem (cost +inf marks a forbidden pair)
/// admit no matching of min(n, m) pairs; the message names the problem index.
class Infeasible : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// The requested backend/device cannot be used (built without CUDA, no GPU, bad id).
class DeviceUnavailable : public Error {
 public:
  using Error::Error;
};

/// A CUDA runtime or library call failed; the message carries call, code, file, line.
class CudaError : public Error {
 public:
  CudaError(const std::string& what, int code) : Error(what), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

/// Device or host memory could not be obtained; the message says needed vs free.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

/// File input/output failed or a file is malformed (.npy reader, JSON writer).
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace otgpu
