// The device-independent parts of the staging redesign: batch chunks for batches
// above the launch-grid limit, batch slices of problem views, problem identity for
// reusing a solve's state, and the debiased divergence that reuses an (x, y) solve
// (counted solves).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "otgpu/otgpu.h"
#include "otgpu_host/cuda_backend.h"
#include "sinkhorn_cpu_util.h"
#include "validate.h"

namespace {

using otgpu::CostKind;
using otgpu::SinkhornProblem;
using otgpu::TensorView;
using otgpu::cuda_backend::batch_chunks;
using otgpu::cuda_backend::same_problem;
using otgpu::cuda_backend::slice_batch;

TEST(BatchChunks, CoverTheBatchInOrderWithinTheLimit) {
  const auto c = batch_chunks(70000, 65535);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].begin, 0);
  EXPECT_EQ(c[0].count, 65535);
  EXPECT_EQ(c[1].begin, 65535);
  EXPECT_EQ(c[1].count, 70000 - 65535);
  // Exact multiples and tiny batches: no empty chunk.
  const auto e = batch_chunks(3 * 65535, 65535);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[2].begin, 2 * 65535);
  EXPECT_EQ(e[2].count, 65535);
  const auto one = batch_chunks(1, 65535);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].count, 1);
  EXPECT_TRUE(batch_chunks(0, 10).empty());
  std::int64_t covered = 0;
  for (const auto& ch : batch_chunks(1001, 7)) {
    EXPECT_EQ(ch.begin, covered);
    EXPECT_GE(ch.count, 1);
    EXPECT_LE(ch.count, 7);
    covered += ch.count;
  }
  EXPECT_EQ(covered, 1001);
  EXPECT_THROW(batch_chunks(10, 0), otgpu::InvalidArgument);
}

/// Strided (non-contiguous) batched views over one buffer: x [B, n, d] read with the
/// batch as the innermost memory axis, f32 weights [B, n] transposed.
struct StridedBatch {
  std::int64_t B = 5, n = 3, m = 4, d = 2;
  std::vector<double> x, y;
  std::vector<float> a;
  std::vector<double> b_shared;
  SinkhornProblem problem() const {
    SinkhornProblem p;
    p.x.data = x.data();
    p.x.dtype = otgpu::DType::f64;
    p.x.rank = 3;
    p.x.shape = {B, n, d};
    p.x.strides = {1, d * B, B};  // memory order [n, d, B]
    p.y = TensorView::host(y.data(), {B, m, d});
    p.a.data = a.data();
    p.a.dtype = otgpu::DType::f32;
    p.a.rank = 2;
    p.a.shape = {B, n, 0};
    p.a.strides = {1, B, 0};  // memory order [n, B]
    p.b = TensorView::host(b_shared.data(), {m});
    return p;
  }
  StridedBatch() {
    x = otgpu_test::uniform_values(static_cast<std::size_t>(B * n * d), 11);
    y = otgpu_test::uniform_values(static_cast<std::size_t>(B * m * d), 12);
    for (std::int64_t k = 0; k < B * n; ++k) a.push_back(0.5f + static_cast<float>(k % 3));
    b_shared = otgpu_test::random_weights(static_cast<std::size_t>(m), 13);
  }
};

TEST(SliceBatch, ViewsTheSameElementsAsTheWholeBatch) {
  const StridedBatch sb;
  const SinkhornProblem p = sb.problem();
  otgpu::SinkhornOptions o;
  o.rho_a = o.rho_b = 1.0;  // masses differ on purpose
  const auto shape = otgpu::detail::validate_sinkhorn(p, o);
  ASSERT_TRUE(shape.a_batched);
  ASSERT_FALSE(shape.b_batched);
  const std::int64_t begin = 2, count = 3;
  const SinkhornProblem s = slice_batch(p, shape, begin, count);
  EXPECT_EQ(s.x.dim(0), count);
  EXPECT_EQ(s.y.dim(0), count);
  EXPECT_EQ(s.a.dim(0), count);
  EXPECT_EQ(s.b.data, p.b.data);  // shared weights are not sliced
  for (std::int64_t b = 0; b < count; ++b) {
    for (std::int64_t i = 0; i < sb.n; ++i) {
      for (std::int64_t k = 0; k < sb.d; ++k) {
        EXPECT_EQ(otgpu::load_as_double(s.x, b, i, k),
                  sb.x[static_cast<std::size_t>((i * sb.d + k) * sb.B + begin + b)]);
      }
      EXPECT_EQ(otgpu::load_as_double(s.a, b, i),
                sb.a[static_cast<std::size_t>(i * sb.B + begin + b)]);
    }
    for (std::int64_t j = 0; j < sb.m; ++j) {
      EXPECT_EQ(otgpu::load_as_double(s.y, b, j, 1),
                sb.y[static_cast<std::size_t>(((begin + b) * sb.m + j) * sb.d + 1)]);
    }
  }
  // The whole batch is the problem itself; out-of-range slices are refused.
  EXPECT_TRUE(same_problem(slice_batch(p, shape, 0, sb.B), p));
  EXPECT_THROW(slice_batch(p, shape, 4, 2), otgpu::InvalidArgument);
  EXPECT_THROW(slice_batch(p, shape, -1, 1), otgpu::InvalidArgument);
}

TEST(SliceBatch, CostMatricesSliceAlongTheBatch) {
  const std::int64_t B = 4, n = 3, m = 2;
  const auto c = otgpu_test::uniform_values(static_cast<std::size_t>(B * n * m), 21);
  SinkhornProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {B, n, m});
  const auto shape = otgpu::detail::validate_sinkhorn(p, {});
  const SinkhornProblem s = slice_batch(p, shape, 3, 1);
  EXPECT_EQ(s.cost.dim(0), 1);
  EXPECT_EQ(otgpu::load_as_double(s.cost, 0, 2, 1),
            c[static_cast<std::size_t>((3 * n + 2) * m + 1)]);
}

TEST(SameProblem, ComparesPointersShapesStridesAndKinds) {
  const StridedBatch sb;
  const SinkhornProblem p = sb.problem();
  EXPECT_TRUE(same_problem(p, p));
  SinkhornProblem q = p;
  q.x.strides[1] += 1;
  EXPECT_FALSE(same_problem(p, q));
  q = p;
  q.y.data = sb.x.data();
  EXPECT_FALSE(same_problem(p, q));
  q = p;
  q.a = TensorView{};
  EXPECT_FALSE(same_problem(p, q));
  q = p;
  q.cost_kind = CostKind::euclidean;
  EXPECT_FALSE(same_problem(p, q));
  q = p;
  q.x.shape[1] -= 1;
  EXPECT_FALSE(same_problem(p, q));
  q = p;
  q.x.space = otgpu::MemorySpace::device;
  EXPECT_FALSE(same_problem(p, q));
}

struct Divergence : ::testing::Test {
  std::int64_t n = 12, m = 9, d = 2;
  std::vector<double> x = otgpu_test::uniform_values(static_cast<std::size_t>(n * d), 31);
  std::vector<double> y = otgpu_test::uniform_values(static_cast<std::size_t>(m * d), 32, 0.2, 1.3);
  SinkhornProblem problem() const {
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {n, d});
    p.y = TensorView::host(y.data(), {m, d});
    return p;
  }
  otgpu::SinkhornOptions options() const {
    auto o = otgpu_test::cpu_options(0.05);
    o.eps = 0.05;
    o.eps_relative = true;
    o.max_iter = 5000;
    o.tol = 1e-10;
    return o;
  }
};

TEST_F(Divergence, GivenTheXYResultSolvesOnlyTheSelfTerms) {
  const auto p = problem();
  const auto o = options();
  const std::int64_t s0 = otgpu::detail::solve_count();
  const auto xy = otgpu::sinkhorn(p, o);
  EXPECT_EQ(otgpu::detail::solve_count() - s0, 1);
  const std::int64_t s1 = otgpu::detail::solve_count();
  const auto reused = otgpu::sinkhorn_divergence(p, xy, o);
  EXPECT_EQ(otgpu::detail::solve_count() - s1, 2);
  const std::int64_t s2 = otgpu::detail::solve_count();
  const auto full = otgpu::sinkhorn_divergence(p, o);
  EXPECT_EQ(otgpu::detail::solve_count() - s2, 3);
  ASSERT_EQ(reused.size(), 1u);
  ASSERT_EQ(full.size(), 1u);
  EXPECT_EQ(reused[0], full[0]);  // same solves, same order: bitwise equal
  // Independent check: the divergence from three separate solves at the same eps.
  auto abs = o;
  abs.eps_relative = false;
  abs.eps = xy.problems[0].eps;
  SinkhornProblem xx, yy;
  xx.x = xx.y = p.x;
  yy.x = yy.y = p.y;
  const double expect = xy.problems[0].ot_eps - 0.5 * (otgpu::sinkhorn(xx, abs).problems[0].ot_eps +
                                                       otgpu::sinkhorn(yy, abs).problems[0].ot_eps);
  EXPECT_NEAR(reused[0], expect, 1e-9);
  EXPECT_GT(reused[0], 0.0);
}

TEST_F(Divergence, ResultOfAnotherShapeIsAShapeError) {
  const auto p = problem();
  const auto o = options();
  SinkhornProblem other;
  other.x = TensorView::host(x.data(), {n - 1, d});
  other.y = p.y;
  const auto wrong = otgpu::sinkhorn(other, o);
  EXPECT_THROW(otgpu::sinkhorn_divergence(p, wrong, o), otgpu::ShapeError);
}

TEST(SolveState, CpuResultsCarryNone) {
  std::vector<double> x = {0, 1, 2}, y = {0.5, 1.5};
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {3, 1});
  p.y = TensorView::host(y.data(), {2, 1});
  const auto r = otgpu::sinkhorn(p, otgpu_test::cpu_options(0.1));
  EXPECT_EQ(r.state, nullptr);
}

}  // namespace
