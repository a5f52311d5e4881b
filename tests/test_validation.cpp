// Every bad-input path of Sinkhorn validation: the error type and a message that
// names the argument and the offending value.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "otgpu/otgpu.h"
#include "validate.h"

namespace {

using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::TensorView;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Runs fn, expects exactly error type E (or a subclass) and every fragment in
/// its message.
template <class E>
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one mentioning '" << *fragments.begin() << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& f : fragments) {
      EXPECT_NE(msg.find(f), std::string::npos) << "message '" << msg << "' lacks '" << f << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

/// A valid batched point-cloud problem (B = 2, n = 4, m = 3, d = 2) to break.
struct Fixture {
  std::vector<double> x = std::vector<double>(2 * 4 * 2, 0.5);
  std::vector<double> y = std::vector<double>(2 * 3 * 2, 0.25);
  std::vector<double> a = std::vector<double>(2 * 4, 0.25);
  std::vector<double> b = std::vector<double>(2 * 3, 1.0 / 3.0);
  std::vector<double> cost = std::vector<double>(2 * 4 * 3, 1.0);
  SinkhornProblem problem() const {
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {2, 4, 2});
    p.y = TensorView::host(y.data(), {2, 3, 2});
    p.a = TensorView::host(a.data(), {2, 4});
    p.b = TensorView::host(b.data(), {2, 3});
    return p;
  }
  SinkhornProblem matrix() const {
    SinkhornProblem p;
    p.cost_kind = CostKind::matrix;
    p.cost = TensorView::host(cost.data(), {2, 4, 3});
    return p;
  }
};

SinkhornOptions cpu() {
  SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  o.max_iter = 5;
  return o;
}

void solve(const SinkhornProblem& p, const SinkhornOptions& o = cpu()) { otgpu::sinkhorn(p, o); }

TEST(Validation, ValidProblemsPass) {
  Fixture fx;
  EXPECT_NO_THROW(solve(fx.problem()));
  EXPECT_NO_THROW(solve(fx.matrix()));
  const auto s = otgpu::detail::validate_sinkhorn(fx.problem(), cpu());
  EXPECT_EQ(s.batch, 2);
  EXPECT_EQ(s.n, 4);
  EXPECT_EQ(s.m, 3);
  EXPECT_EQ(s.d, 2);
  EXPECT_TRUE(s.a_batched);
  EXPECT_TRUE(s.b_batched);
  const auto sm = otgpu::detail::validate_sinkhorn(fx.matrix(), cpu());
  EXPECT_EQ(sm.d, 0);
  EXPECT_FALSE(sm.a_batched);
}

// ------------------------------------------------------------------ options

TEST(Validation, Eps) {
  Fixture fx;
  for (double bad : {0.0, -1.0, kNan, kInf}) {
    auto o = cpu();
    o.eps = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"eps", fmt::format("{}", bad)});
  }
}

TEST(Validation, IterationOptions) {
  Fixture fx;
  auto o = cpu();
  o.max_iter = 0;
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); }, {"max_iter", "0"});
  for (double bad : {-1e-3, kNan, kInf}) {
    o = cpu();
    o.tol = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"tol", fmt::format("{}", bad)});
  }
  o = cpu();
  o.check_every = -2;
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); }, {"check_every", "-2"});
  o = cpu();
  o.cpu_threads = -1;
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); }, {"cpu_threads", "-1"});
  o = cpu();
  o.device = -3;
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); }, {"device", "-3"});
}

TEST(Validation, EpsScaling) {
  Fixture fx;
  for (double bad : {kNan, kInf}) {
    auto o = cpu();
    o.eps_init = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"eps_init", fmt::format("{}", bad)});
  }
  for (double bad : {0.0, 1.0, 1.5, -0.5, kNan}) {
    auto o = cpu();
    o.eps_init = 1.0;
    o.eps_decay = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"eps_decay", fmt::format("{}", bad)});
  }
  auto off = cpu();
  off.eps_init = 0.0;
  off.eps_decay = 7.0;  // ignored while scaling is off
  EXPECT_NO_THROW(solve(fx.problem(), off));
}

TEST(Validation, AutoSentinelsAndAcceleration) {
  // kAuto (-1) is the only negative tol / eps_init accepted; it means "the library's
  // default for the backend that runs".
  Fixture fx;
  auto o = cpu();
  o.tol = otgpu::kAuto;
  o.eps_init = otgpu::kAuto;
  EXPECT_NO_THROW(solve(fx.problem(), o));
  for (double bad : {-0.5, -2.0}) {
    o = cpu();
    o.eps_init = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"eps_init", fmt::format("{}", bad), "kAuto"});
    o = cpu();
    o.tol = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"tol", fmt::format("{}", bad), "kAuto"});
  }
  o = cpu();
  o.acceleration = static_cast<otgpu::SinkhornAcceleration>(7);
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); }, {"acceleration", "7"});
}

TEST(Validation, PointCostOverflow) {
  // Finite points whose squared distance overflows: one error naming the cost and the
  // first pair (problem, i, j), for both point costs.
  Fixture fx;
  fx.x[(1 * 4 + 2) * 2 + 0] = 1e200;  // problem 1, i = 2
  expect_error<otgpu::NonFiniteInput>([&] { solve(fx.problem()); },
                                      {"cost", "overflows", "problem 1, i = 2, j = 0"});
  auto p = fx.problem();
  p.cost_kind = CostKind::euclidean;
  fx.x[(1 * 4 + 2) * 2 + 0] = 1.7e308;
  fx.y[(1 * 3 + 1) * 2 + 0] = -1.7e308;  // first overflow: x_0 against this y_1
  expect_error<otgpu::NonFiniteInput>([&] { solve(p); }, {"cost", "|x_i - y_j|", "i = 0, j = 1"});
  // Large but representable costs pass.
  Fixture ok;
  ok.x[0] = 1e150;
  EXPECT_NO_THROW(otgpu::detail::validate_sinkhorn(ok.problem(), cpu()));
}

TEST(Validation, Rho) {
  Fixture fx;
  for (double bad : {0.0, -1.0, kNan, -kInf}) {
    auto o = cpu();
    o.rho_a = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"rho_a", fmt::format("{}", bad)});
    o = cpu();
    o.rho_b = bad;
    expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem(), o); },
                                         {"rho_b", fmt::format("{}", bad)});
  }
}

TEST(Validation, WarmStart) {
  Fixture fx;
  auto o = cpu();
  o.f_init.assign(7, 0.0);  // B * n = 8
  expect_error<otgpu::ShapeError>([&] { solve(fx.problem(), o); }, {"f_init", "7", "8"});
  o = cpu();
  o.g_init.assign(5, 0.0);  // B * m = 6
  expect_error<otgpu::ShapeError>([&] { solve(fx.problem(), o); }, {"g_init", "5", "6"});
  o = cpu();
  o.f_init.assign(8, 0.0);
  o.f_init[3] = kNan;
  expect_error<otgpu::NonFiniteInput>([&] { solve(fx.problem(), o); }, {"f_init", "3", "nan"});
  o = cpu();
  o.g_init.assign(6, 0.0);
  o.g_init[5] = -kInf;
  expect_error<otgpu::NonFiniteInput>([&] { solve(fx.problem(), o); }, {"g_init", "5", "-inf"});
}

// ------------------------------------------------------------------- shapes

TEST(Validation, PointCloudShapes) {
  Fixture fx;
  auto p = fx.problem();
  p.x = TensorView::host(fx.x.data(), {16});
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"x", "[16]"});
  p = fx.problem();
  p.y = TensorView::host(fx.y.data(), {6, 2});  // rank 2 vs rank 3
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"y", "[6, 2]", "[2, 4, 2]"});
  p = fx.problem();
  p.y = TensorView::host(fx.y.data(), {2, 2, 3});  // d = 3 vs 2
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"y", "[2, 2, 3]", "[2, 4, 2]"});
  p = fx.problem();
  p.y = TensorView::host(fx.y.data(), {1, 3, 2});  // B = 1 vs 2
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"y", "[1, 3, 2]", "[2, 4, 2]"});
  p = fx.problem();
  p.x = TensorView{};
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"x", "required"});
  p = fx.problem();
  p.cost = TensorView::host(fx.cost.data(), {2, 4, 3});
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"cost", "absent", "[2, 4, 3]"});
}

TEST(Validation, MatrixShapes) {
  Fixture fx;
  auto p = fx.matrix();
  p.cost = TensorView{};
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"cost", "required"});
  p = fx.matrix();
  p.x = TensorView::host(fx.x.data(), {8, 2});
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"x", "absent", "[8, 2]"});
  p = fx.matrix();
  p.cost = TensorView::host(fx.cost.data(), {24});
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"cost", "[24]"});
}

TEST(Validation, WeightShapes) {
  Fixture fx;
  auto p = fx.problem();
  p.a = TensorView::host(fx.a.data(), {3});
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"a", "[3]", "[4]"});
  p = fx.problem();
  p.b = TensorView::host(fx.b.data(), {3, 2});
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"b", "[3, 2]", "[2, 3]"});
  p = fx.problem();
  p.a = TensorView::host(fx.a.data(), {1, 4});  // wrong B
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"a", "[1, 4]"});
  // [B, n] weights need a batched problem.
  SinkhornProblem flat;
  flat.x = TensorView::host(fx.x.data(), {4, 2});
  flat.y = TensorView::host(fx.y.data(), {3, 2});
  flat.a = TensorView::host(fx.a.data(), {1, 4});
  expect_error<otgpu::ShapeError>([&] { solve(flat); }, {"a", "[1, 4]", "not batched"});
  // Shared [n] weights work for a batched problem.
  p = fx.problem();
  p.a = TensorView::host(fx.a.data(), {4});
  EXPECT_NO_THROW(solve(p));
}

TEST(Validation, SizesRanksStridesDtypes) {
  Fixture fx;
  auto p = fx.problem();
  p.x.shape[1] = 0;
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"x", "size 0", "dimension 1"});
  p = fx.problem();
  p.y.shape[0] = 0;
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"y", "size 0"});
  p = fx.problem();
  p.x.strides[2] = -1;
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"x", "stride -1"});
  p = fx.problem();
  p.y.rank = 4;
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"y", "rank 4"});
  p = fx.problem();
  p.x.rank = 0;
  expect_error<otgpu::ShapeError>([&] { solve(p); }, {"x", "rank 0"});
  p = fx.problem();
  p.b.dtype = static_cast<otgpu::DType>(7);
  expect_error<otgpu::DTypeError>([&] { solve(p); }, {"b", "7"});
  p = fx.problem();
  p.cost_kind = static_cast<CostKind>(9);
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"cost_kind", "9"});
}

TEST(Validation, MemorySpaces) {
  Fixture fx;
  auto p = fx.problem();
  p.y.space = otgpu::MemorySpace::device;
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"y", "device", "x", "host"});
  p = fx.problem();
  p.a.space = otgpu::MemorySpace::device;
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"a", "device"});
  // All-device views skip the host reads of the data checks (NaN passes here; the
  // CUDA backend checks on the device).
  std::vector<double> bad_x(fx.x);
  bad_x[0] = kNan;
  p = fx.problem();
  p.x.data = bad_x.data();
  for (TensorView* v : {&p.x, &p.y, &p.a, &p.b}) v->space = otgpu::MemorySpace::device;
  const auto s = otgpu::detail::validate_sinkhorn(p, cpu());
  EXPECT_EQ(s.space, otgpu::MemorySpace::device);
  // The CPU backend refuses device memory.
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"device memory"});
}

// --------------------------------------------------------------------- data

TEST(Validation, NonFinitePoints) {
  Fixture fx;
  fx.x[(0 * 4 + 3) * 2 + 1] = kNan;  // [0, 3, 1]
  expect_error<otgpu::NonFiniteInput>([&] { solve(fx.problem()); },
                                      {"x: element [0, 3, 1] is nan"});
  Fixture fy;
  fy.y[(1 * 3 + 2) * 2 + 0] = kInf;  // [1, 2, 0]
  expect_error<otgpu::NonFiniteInput>([&] { solve(fy.problem()); },
                                      {"y: element [1, 2, 0] is inf"});
  Fixture fc;
  fc.cost[(1 * 4 + 0) * 3 + 2] = -kInf;  // [1, 0, 2]
  expect_error<otgpu::NonFiniteInput>([&] { solve(fc.matrix()); },
                                      {"cost: element [1, 0, 2] is -inf"});
  // f32 views are read as float.
  std::vector<float> xf(16, 0.5f);
  xf[5] = std::numeric_limits<float>::quiet_NaN();
  auto p = fx.problem();
  p.x = TensorView::host(xf.data(), {2, 4, 2});
  expect_error<otgpu::NonFiniteInput>([&] { solve(p); }, {"x: element [0, 2, 1] is nan"});
}

TEST(Validation, Weights) {
  Fixture fx;
  fx.a[5] = kNan;  // [1, 1]
  expect_error<otgpu::NonFiniteInput>([&] { solve(fx.problem()); }, {"a", "[1, 1]", "nan"});
  Fixture fneg;
  fneg.b[1] = -0.5;  // [0, 1]
  expect_error<otgpu::InvalidArgument>([&] { solve(fneg.problem()); }, {"b", "[0, 1]", "-0.5"});
  Fixture fzero;
  for (int i = 4; i < 8; ++i) fzero.a[static_cast<std::size_t>(i)] = 0.0;
  expect_error<otgpu::InvalidArgument>([&] { solve(fzero.problem()); },
                                       {"a", "problem 1", "mass 0"});
  Fixture fshared;
  auto p = fshared.problem();
  std::vector<double> zeros(3, 0.0);
  p.b = TensorView::host(zeros.data(), {3});
  expect_error<otgpu::InvalidArgument>([&] { solve(p); }, {"b", "mass is 0"});
}

TEST(Validation, BalancedMassesMustMatch) {
  Fixture fx;
  for (int j = 3; j < 6; ++j) fx.b[static_cast<std::size_t>(j)] = 0.5;  // problem 1: mass 1.5
  expect_error<otgpu::InvalidArgument>([&] { solve(fx.problem()); },
                                       {"problem 1", "mass(a) = 1", "mass(b) = 1.5"});
  auto o = cpu();
  o.rho_b = 2.0;  // unbalanced: any masses
  EXPECT_NO_THROW(solve(fx.problem(), o));
  // Within the relative 1e-5 tolerance, b is rescaled to the mass of a.
  Fixture close;
  close.b[0] *= 1.0 + 2e-6;
  EXPECT_NO_THROW(solve(close.problem()));
}

// ------------------------------------------------------------------ backend

TEST(Validation, CudaBackendWithoutDevice) {
  if (otgpu::cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  Fixture fx;
  auto o = cpu();
  o.backend = otgpu::Backend::cuda;
  expect_error<otgpu::DeviceUnavailable>([&] { solve(fx.problem(), o); }, {"device"});
}

TEST(Validation, DerivedOutputsCheckTheirInputs) {
  Fixture fx;
  const auto r = otgpu::sinkhorn(fx.problem(), cpu());
  expect_error<otgpu::InvalidArgument>([&] { otgpu::barycentric_map(fx.matrix(), r); },
                                       {"barycentric_map"});
  auto broken = r;
  broken.g.pop_back();
  expect_error<otgpu::ShapeError>([&] { otgpu::gradient_x(fx.problem(), broken); }, {"gradient_x"});
  broken = r;
  broken.f[2] = kNan;
  expect_error<otgpu::NonFiniteInput>([&] { otgpu::sample_partners(fx.problem(), broken, 1); },
                                      {"sample_partners", "f[2]", "nan"});
  expect_error<otgpu::InvalidArgument>([&] { otgpu::sinkhorn_divergence(fx.matrix(), cpu()); },
                                       {"sinkhorn_divergence"});
}

TEST(Types, ParseBackendAndCost) {
  EXPECT_EQ(otgpu::parse_backend("cpu"), otgpu::Backend::cpu);
  EXPECT_EQ(otgpu::parse_backend("auto"), otgpu::Backend::automatic);
  EXPECT_EQ(otgpu::parse_backend("cuda"), otgpu::Backend::cuda);
  expect_error<otgpu::InvalidArgument>([] { otgpu::parse_backend("tpu", "--backend"); },
                                       {"--backend", "tpu"});
  EXPECT_EQ(otgpu::parse_cost_kind("euclidean"), CostKind::euclidean);
  expect_error<otgpu::InvalidArgument>([] { otgpu::parse_cost_kind("l1"); }, {"cost", "l1"});
}

}  // namespace
