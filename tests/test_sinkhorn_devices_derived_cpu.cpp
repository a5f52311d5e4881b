// The derived outputs of a SinkhornOptions::devices result, the parts that run without
// a device: the kept per-shard state is recognised by its owner's type (never by
// casting the opaque pointer), a state kept for other views is refused with a clear
// error, and the shards' parts are concatenated in row order per problem of the batch
// (closed form: every value encodes its problem, global row and coordinate). The
// solves and outputs on a device are in tests/gpu/test_sinkhorn_devices_derived_gpu.cpp.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../host/src/dist/multi_device.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {
namespace {

struct Data {
  std::vector<double> x, y, x_other;
  SinkhornProblem problem, other;
};

Data data(std::int64_t n, std::int64_t m) {
  Data d;
  for (std::int64_t i = 0; i < n; ++i) d.x.push_back(0.1 * static_cast<double>(i));
  for (std::int64_t j = 0; j < m; ++j) d.y.push_back(0.2 * static_cast<double>(j) - 0.3);
  d.x_other = d.x;
  d.problem.x = TensorView::host(d.x.data(), {n, 1});
  d.problem.y = TensorView::host(d.y.data(), {m, 1});
  d.other = d.problem;
  d.other.x = TensorView::host(d.x_other.data(), {n, 1});  // same values, other views
  return d;
}

/// A result shaped like a devices solve of `key` over {0, 0}, carrying a DevicesState
/// whose shards kept no device state.
SinkhornResult devices_result(const SinkhornProblem& key, std::int64_t n, std::int64_t m) {
  SinkhornResult r;
  r.backend = Backend::cuda;
  r.batch = 1;
  r.n = n;
  r.m = m;
  r.d = 1;
  r.f.assign(static_cast<std::size_t>(n), 0.0);
  r.g.assign(static_cast<std::size_t>(m), 0.0);
  r.problems.resize(1);
  r.problems[0].eps = 0.5;
  auto st = std::make_unique<dist::DevicesState>();
  st->key = key;
  st->devices = {0, 0};
  st->rows = {dist::row_range(n, 0, 2), dist::row_range(n, 1, 2)};
  st->local = {key, key};
  st->shards.resize(2);
  r.state = dist::wrap_devices_state(std::move(st));
  return r;
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

TEST(SinkhornDevicesDerived, StateIsRecognisedByItsOwnerOnly) {
  const Data d = data(5, 4);
  SinkhornResult r = devices_result(d.problem, 5, 4);
  const dist::DevicesState* st = dist::devices_state(r);
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(st->devices, (std::vector<int>{0, 0}));
  // No state, and a state of another owner (what a single-GPU solve keeps is one), are
  // not a devices state.
  SinkhornResult plain = r;
  plain.state.reset();
  EXPECT_EQ(dist::devices_state(plain), nullptr);
  plain.state = std::make_shared<const int>(7);
  EXPECT_EQ(dist::devices_state(plain), nullptr);
  // Copies of the result share the one state; it dies with the last.
  const SinkhornResult copy = r;
  EXPECT_EQ(dist::devices_state(copy), st);
}

TEST(SinkhornDevicesDerived, StateOfOtherViewsIsRefused) {
  const Data d = data(5, 4);
  const SinkhornResult r = devices_result(d.problem, 5, 4);
  for (const std::string what : {"barycentric_map", "gradient_x", "sample_partners"}) {
    const std::string msg = message_of<InvalidArgument>([&] {
      if (what == "barycentric_map") (void)barycentric_map(d.other, r);
      if (what == "gradient_x") (void)gradient_x(d.other, r);
      if (what == "sample_partners") (void)sample_partners(d.other, r, 3);
    });
    EXPECT_EQ(msg.rfind(what + ": result comes from a solve over devices [0,0]", 0), 0u) << msg;
    EXPECT_NE(msg.find("other views"), std::string::npos) << msg;
  }
}

TEST(SinkhornDevicesDerived, MatchingStateRunsTheShardsNotARestage) {
  // With the matching problem the call goes to the shards' own entry points, whose
  // (absent) device state cannot serve it: their error, which names the shard function
  // (without CUDA: its DeviceUnavailable; with CUDA: the missing kept state), never
  // that of a restage of the whole problem on devices[0].
  const Data d = data(5, 4);
  const SinkhornResult r = devices_result(d.problem, 5, 4);
  const std::string grad = message_of<Error>([&] { (void)gradient_x(d.problem, r); });
  EXPECT_EQ(grad.rfind("dist::gradient_x: ", 0), 0u) << grad;
  const std::string pairs = message_of<Error>([&] { (void)sample_partners(d.problem, r, 3); });
  EXPECT_EQ(pairs.rfind("dist::sample_partners: ", 0), 0u) << pairs;
}

TEST(SinkhornDevicesDerived, PartsAreConcatenatedInRowOrderPerProblem) {
  // n = 7 over 3 shards (3, 2, 2 rows), B = 2, 2 values per row: value = 1000 b + 10
  // global row + k, produced by each shard from its own rows.
  const std::int64_t n = 7, B = 2, per = 2;
  std::vector<dist::RowRange> rows;
  for (int r = 0; r < 3; ++r) rows.push_back(dist::row_range(n, r, 3));
  const auto out = dist::concat_shards<double>(rows, B, n, per, [&](std::size_t r) {
    std::vector<double> part;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = rows[r].begin; i < rows[r].end; ++i)
        for (std::int64_t k = 0; k < per; ++k)
          part.push_back(static_cast<double>(1000 * b + 10 * i + k));
    return part;
  });
  ASSERT_EQ(out.size(), static_cast<std::size_t>(B * n * per));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < per; ++k)
        EXPECT_EQ(out[static_cast<std::size_t>((b * n + i) * per + k)],
                  static_cast<double>(1000 * b + 10 * i + k))
            << b << " " << i << " " << k;
}

TEST(SinkhornDevicesDerived, AShardsErrorIsRethrownAndAShortPartRefused) {
  std::vector<dist::RowRange> rows = {dist::row_range(4, 0, 2), dist::row_range(4, 1, 2)};
  const std::string msg = message_of<DeviceUnavailable>([&] {
    (void)dist::concat_shards<std::int64_t>(rows, 1, 4, 1, [&](std::size_t r) {
      if (r == 1) throw DeviceUnavailable("shard one failed");
      return std::vector<std::int64_t>(2, 0);
    });
  });
  EXPECT_EQ(msg, "shard one failed");
  const std::string short_msg = message_of<Error>([&] {
    (void)dist::concat_shards<std::int64_t>(
        rows, 1, 4, 1, [&](std::size_t r) { return std::vector<std::int64_t>(r == 0 ? 2 : 1, 0); });
  });
  EXPECT_NE(short_msg.find("shard 1 returned 1 values for its 2 rows, expected 2"),
            std::string::npos)
      << short_msg;
}

}  // namespace
}  // namespace otgpu
