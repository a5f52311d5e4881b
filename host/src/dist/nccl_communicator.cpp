// NcclCommunicator: collectives over device buffers with NCCL. In one process with
// several GPUs, ncclCommInitAll makes one communicator per device (each then driven by
// its own thread); across processes, rank 0 of a bootstrap communicator (MPI) creates
// the ncclUniqueId and broadcasts it, and every rank joins with ncclCommInitRank.
// Host-buffer collectives (scalars of the solver's control flow) stage through a
// communicator-owned device buffer on the communicator's stream. Every NCCL and CUDA
// call is checked. Built without NCCL the entry points throw DeviceUnavailable.
#include <fmt/format.h>

#include <cstring>

#include "otgpu/dist.h"

#if defined(OTGPU_WITH_NCCL)
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "otgpu_kernels/cuda_check.h"
#endif

namespace otgpu::dist {

#if defined(OTGPU_WITH_NCCL)

bool nccl_built() noexcept { return true; }

namespace {

void check_nccl(ncclResult_t code, const char* call) {
  if (code == ncclSuccess) return;
  throw CommError(fmt::format("{} failed: {} (NCCL error {})", call, ncclGetErrorString(code),
                              static_cast<int>(code)));
}
#define OTGPU_NCCL_CHECK(call) check_nccl((call), #call)

/// The current device set to `device` for the scope, restored after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    OTGPU_CUDA_CHECK(cudaGetDevice(&saved_));
    OTGPU_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { static_cast<void>(cudaSetDevice(saved_)); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int saved_ = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device) : comm_(comm), device_(device) {
    OTGPU_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    OTGPU_NCCL_CHECK(ncclCommCount(comm_, &size_));
    const DeviceScope scope(device_);
    OTGPU_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~NcclCommunicator() override {
    const int saved = current_device();
    static_cast<void>(cudaSetDevice(device_));
    if (staging_ != nullptr) static_cast<void>(cudaFree(staging_));
    static_cast<void>(cudaStreamDestroy(stream_));
    static_cast<void>(ncclCommDestroy(comm_));
    static_cast<void>(cudaSetDevice(saved));
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "nccl"; }

  void allreduce_device(void* data, std::int64_t count, DType dtype, ReduceOp op,
                        void* stream) override {
    const DeviceScope scope(device_);
    OTGPU_NCCL_CHECK(ncclAllReduce(data, data, static_cast<std::size_t>(count), nccl_type(dtype),
                                   op == ReduceOp::sum ? ncclSum : ncclMax, comm_,
                                   static_cast<cudaStream_t>(stream)));
  }

  void allreduce(double* data, std::int64_t count, ReduceOp op) override {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(double);
    void* dev = staging(bytes);
    const DeviceScope scope(device_);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(dev, data, bytes, cudaMemcpyHostToDevice, stream_));
    OTGPU_NCCL_CHECK(ncclAllReduce(dev, dev, static_cast<std::size_t>(count), ncclFloat64,
                                   op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(data, dev, bytes, cudaMemcpyDeviceToHost, stream_));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void allgather(const double* send, std::int64_t count, double* recv) override {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(double);
    auto* dev = static_cast<char*>(staging(bytes * static_cast<std::size_t>(size_ + 1)));
    const DeviceScope scope(device_);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(dev, send, bytes, cudaMemcpyHostToDevice, stream_));
    OTGPU_NCCL_CHECK(ncclAllGather(dev, dev + bytes, static_cast<std::size_t>(count), ncclFloat64,
                                   comm_, stream_));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(recv, dev + bytes, bytes * static_cast<std::size_t>(size_),
                                     cudaMemcpyDeviceToHost, stream_));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void broadcast(void* data, std::int64_t bytes, int root) override {
    if (root < 0 || root >= size_) {
      throw InvalidArgument(fmt::format("broadcast: root is {} (must be in [0, {}))", root, size_));
    }
    const auto len = static_cast<std::size_t>(bytes);
    void* dev = staging(len);
    const DeviceScope scope(device_);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(dev, data, len, cudaMemcpyHostToDevice, stream_));
    OTGPU_NCCL_CHECK(ncclBroadcast(dev, dev, len, ncclUint8, root, comm_, stream_));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(data, dev, len, cudaMemcpyDeviceToHost, stream_));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void barrier() override {
    double one = 1.0;
    allreduce(&one, 1, ReduceOp::sum);
  }

  void abort(int code, const std::string& message) override {
    static_cast<void>(ncclCommAbort(comm_));
    comm_ = nullptr;
    throw CommError(
        fmt::format("rank {} aborted the NCCL communicator (code {}): {}", rank_, code, message));
  }

 private:
  static int current_device() {
    int d = 0;
    static_cast<void>(cudaGetDevice(&d));
    return d;
  }

  static ncclDataType_t nccl_type(DType t) { return t == DType::f64 ? ncclFloat64 : ncclFloat32; }

  /// A grow-only device buffer of the communicator, for staging host collectives (not
  /// solver memory: the solver's buffers come from its runtime context).
  void* staging(std::size_t bytes) {
    if (bytes <= staging_bytes_) return staging_;
    const DeviceScope scope(device_);
    if (staging_ != nullptr) {
      OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream_));
      OTGPU_CUDA_CHECK(cudaFree(staging_));
      staging_ = nullptr;
      staging_bytes_ = 0;
    }
    OTGPU_CUDA_CHECK(cudaMalloc(&staging_, bytes));
    staging_bytes_ = bytes;
    return staging_;
  }

  ncclComm_t comm_;
  int device_;
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  void* staging_ = nullptr;
  std::size_t staging_bytes_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> nccl_local(const std::vector<int>& devices) {
  if (devices.empty()) throw InvalidArgument("nccl_local: devices is empty");
  int count = 0;
  OTGPU_CUDA_CHECK(cudaGetDeviceCount(&count));
  for (int d : devices) {
    if (d < 0 || d >= count) {
      throw DeviceUnavailable(
          fmt::format("nccl_local: device {} does not exist ({} CUDA devices)", d, count));
    }
  }
  std::vector<ncclComm_t> comms(devices.size());
  OTGPU_NCCL_CHECK(ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()));
  std::vector<std::unique_ptr<Communicator>> out;
  for (std::size_t k = 0; k < devices.size(); ++k) {
    out.push_back(std::make_unique<NcclCommunicator>(comms[k], devices[k]));
  }
  return out;
}

std::unique_ptr<Communicator> nccl_over(Communicator& bootstrap, int device) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (bootstrap.rank() == 0) OTGPU_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(&id, sizeof id, 0);
  const DeviceScope scope(device);
  ncclComm_t comm = nullptr;
  OTGPU_NCCL_CHECK(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return std::make_unique<NcclCommunicator>(comm, device);
}

#else

bool nccl_built() noexcept { return false; }

std::vector<std::unique_ptr<Communicator>> nccl_local(const std::vector<int>&) {
  throw DeviceUnavailable(
      "nccl_local: libotgpu was built without NCCL (configure the CUDA backend with "
      "OTGPU_NCCL=ON and NCCL installed, e.g. the CUDA toolkit's libnccl)");
}

std::unique_ptr<Communicator> nccl_over(Communicator&, int) {
  throw DeviceUnavailable(
      "nccl_over: libotgpu was built without NCCL (configure the CUDA backend with "
      "OTGPU_NCCL=ON and NCCL installed, e.g. the CUDA toolkit's libnccl)");
}

#endif

}  // namespace otgpu::dist
