// SinkhornOptions::devices and the CUDA routing of dist::sinkhorn, the parts that run
// without a device: option validation (typed errors naming the argument and value),
// and the clean errors of the CUDA paths where no device is usable (the host-staged
// allreduce_device, dist::sinkhorn with backend cuda) on every rank, without a hang.
// The solves themselves are in tests/gpu/test_sinkhorn_sharded_gpu.cpp.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "otgpu/device.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {
namespace {

struct Points {
  std::vector<double> x, y;
  SinkhornProblem problem;
};

Points points(std::int64_t n, std::int64_t m) {
  Points p;
  for (std::int64_t i = 0; i < n; ++i) p.x.push_back(0.1 * static_cast<double>(i));
  for (std::int64_t j = 0; j < m; ++j) p.y.push_back(0.2 * static_cast<double>(j) - 0.3);
  p.problem.x = TensorView::host(p.x.data(), {n, 1});
  p.problem.y = TensorView::host(p.y.data(), {m, 1});
  return p;
}

template <class E>
std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "no exception";
  return {};
}

TEST(SinkhornDevices, CpuBackendWithDevicesIsAnInvalidArgument) {
  const Points p = points(6, 5);
  SinkhornOptions o;
  o.backend = Backend::cpu;
  o.devices = {0, 1};
  const std::string msg = message_of<InvalidArgument>([&] { (void)sinkhorn(p.problem, o); });
  EXPECT_NE(msg.find("devices: [0,1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("backend is cpu"), std::string::npos) << msg;
}

TEST(SinkhornDevices, NegativeOrdinalNamesItsIndex) {
  const Points p = points(6, 5);
  SinkhornOptions o;
  o.devices = {0, -2};
  const std::string msg = message_of<InvalidArgument>([&] { (void)sinkhorn(p.problem, o); });
  EXPECT_NE(msg.find("devices[1] is -2"), std::string::npos) << msg;
}

TEST(SinkhornDevices, MoreShardsThanRowsIsAnInvalidArgument) {
  const Points p = points(2, 5);
  SinkhornOptions o;
  o.devices = {0, 0, 0};
  const std::string msg = message_of<InvalidArgument>([&] { (void)sinkhorn(p.problem, o); });
  EXPECT_NE(msg.find("3 shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find("n = 2"), std::string::npos) << msg;
}

TEST(SinkhornDevices, MissingDeviceIsDeviceUnavailable) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is usable";
  const Points p = points(6, 5);
  SinkhornOptions o;
  o.devices = {0, 0};
  const std::string msg = message_of<DeviceUnavailable>([&] { (void)sinkhorn(p.problem, o); });
  EXPECT_NE(msg.find("devices[0] is 0"), std::string::npos) << msg;
  // One entry is the plain solve on that device: the same error family.
  o.devices = {3};
  EXPECT_THROW((void)sinkhorn(p.problem, o), DeviceUnavailable);
}

TEST(SinkhornDevices, ShardedCudaWithoutDeviceFailsOnEveryRank) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is usable";
  const Points p = points(7, 5);
  std::vector<std::string> errors(3);
  dist::run_local(3, [&](dist::Communicator& c) {
    const auto r = dist::row_range(7, c.rank(), 3);
    SinkhornProblem local = p.problem;
    local.x = TensorView::host(p.x.data() + r.begin, {r.size(), 1});
    SinkhornOptions o;
    o.backend = Backend::cuda;
    try {
      (void)dist::sinkhorn(c, local, o);
    } catch (const DeviceUnavailable& e) {
      errors[static_cast<std::size_t>(c.rank())] = std::string("DeviceUnavailable: ") + e.what();
    } catch (const InvalidArgument& e) {
      errors[static_cast<std::size_t>(c.rank())] = std::string("InvalidArgument: ") + e.what();
    }
  });
  // Every rank fails the agreed validation: rank 0 (the lowest) with its own error, the
  // others naming it.
  EXPECT_EQ(errors[0].rfind("DeviceUnavailable: ", 0), 0u) << errors[0];
  EXPECT_EQ(errors[1].rfind("InvalidArgument: rank 0:", 0), 0u) << errors[1];
  EXPECT_EQ(errors[2].rfind("InvalidArgument: rank 0:", 0), 0u) << errors[2];
}

TEST(SinkhornDevices, HostStagedAllreduceDeviceNeedsCuda) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is usable";
  dist::run_local(2, [&](dist::Communicator& c) {
    double v = 1.0;  // never read: the call must fail before touching it
    const std::string msg = message_of<DeviceUnavailable>(
        [&] { c.allreduce_device(&v, 1, DType::f64, dist::ReduceOp::sum, nullptr); });
    EXPECT_NE(msg.find("allreduce_device: the local communicator"), std::string::npos) << msg;
  });
}

TEST(SinkhornDevices, GpuContextOverloadRejectsASplitOverDevices) {
  // A context is one device: devices beyond it are an InvalidArgument that says what
  // to call instead (needs a device to make the context).
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  GpuContext ctx(0);
  std::vector<double> x(8, 0.5), y(6, 0.25);
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {4, 2});
  p.y = TensorView::host(y.data(), {3, 2});
  SinkhornOptions o;
  o.devices = {0, 0};
  try {
    (void)sinkhorn(ctx, p, o);
    FAIL() << "devices accepted by the GpuContext overload";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("without a context"), std::string::npos) << e.what();
  }
  o.devices = {0};  // the context's own device: the ordinary solve
  EXPECT_EQ(sinkhorn(ctx, p, o).problems.size(), 1u);
}

}  // namespace
}  // namespace otgpu
