#include <cmath>
#include <cstdio>
#include <ctime>
#include <random>
#include <vector>
#include "cpu_exp.h"
using namespace otgpu::cpu;
int main() {
  const int len = 1024, reps = 20000;
  std::vector<double> s(len), c(len), buf(len);
  std::mt19937_64 g(1);
  std::normal_distribution<double> nd(0, 10);
  for (auto& v : s) v = nd(g);
  for (auto& v : c) v = std::fabs(nd(g));
  double mx = -1e300;
  for (double v : s) mx = std::max(mx, v);
  auto T = [&](const char* name, auto f) {
    double acc = 0;
    auto t0 = std::clock();
    for (int r = 0; r < reps; ++r) acc += f();
    auto t1 = std::clock();
    std::printf("%-24s %.3f ns/term (%g)\n", name,
                (double(t1 - t0) * 1e9 / CLOCKS_PER_SEC) / reps / len, acc);
  };
  T("std::exp seq", [&] {
    double sm = 0;
    for (int j = 0; j < len; ++j) {
      double t = s[j] - mx;
      if (t >= -60) sm += std::exp(t);
    }
    return sm;
  });
  T("exp_det seq", [&] {
    double sm = 0;
    for (int j = 0; j < len; ++j) {
      double t = s[j] - mx;
      if (t >= -60) sm += exp_det(t);
    }
    return sm;
  });
  for (auto isa : {ExpIsa::sse2, ExpIsa::avx2, ExpIsa::avx512}) {
    T(isa == ExpIsa::sse2   ? "sse2 exp_sums"
      : isa == ExpIsa::avx2 ? "avx2 exp_sums"
                            : "avx512 exp_sums",
      [&] { return exp_sums_isa(isa, s.data(), nullptr, len, mx, -60).sum; });
    T("exp_sums+c", [&] { return exp_sums_isa(isa, s.data(), c.data(), len, mx, -60).sum; });
    T("shifted+seq sum", [&] {
      exp_shifted_isa(isa, s.data(), len, mx, buf.data());
      double sm = 0;
      for (int j = 0; j < len; ++j) sm += buf[j];
      return sm;
    });
  }
}
