// npy::load_rows (a rank's row slice of X.npy, read at the header's data offset) and
// npy::load_shape against the whole-file reader.
#if defined(OTGPU_TEST_HAS_NPY)
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "npy.h"
#include "otgpu/error.h"

namespace otgpu {
namespace {

std::string write_file(const std::string& name, const std::vector<unsigned char>& bytes) {
  const std::string path = testing::TempDir() + name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(NpyRows, RowSlicesEqualTheWholeFilesRows) {
  std::vector<double> v(7 * 3);
  for (std::size_t k = 0; k < v.size(); ++k) v[k] = 0.5 * static_cast<double>(k) - 3.0;
  const std::string path = write_file("rows_f64.npy", npy::encode(v.data(), 'f', 8, {7, 3}));
  EXPECT_EQ(npy::load_shape(path, "--x"), (std::vector<std::int64_t>{7, 3}));
  const npy::Array whole = npy::load(path, "--x");
  for (std::int64_t b = 0; b <= 7; ++b) {
    for (std::int64_t e = b; e <= 7; ++e) {
      const npy::Array part = npy::load_rows(path, "--x", b, e);
      ASSERT_EQ(part.shape, (std::vector<std::int64_t>{e - b, 3}));
      for (std::int64_t k = 0; k < (e - b) * 3; ++k) EXPECT_EQ(part.at(k), whole.at(b * 3 + k));
    }
  }
  EXPECT_THROW(npy::load_rows(path, "--x", 5, 8), ShapeError);
  EXPECT_THROW(npy::load_rows(path, "--x", 4, 3), ShapeError);
}

TEST(NpyRows, OneDimensionalWeightsAndFloat32) {
  const std::vector<float> w = {1.f, 2.f, 3.f, 4.f, 5.f};
  const std::string path = write_file("rows_f32.npy", npy::encode(w.data(), 'f', 4, {5}));
  const npy::Array part = npy::load_rows(path, "--a", 1, 4);
  ASSERT_EQ(part.shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(part.dtype, DType::f32);
  EXPECT_EQ(part.at(0), 2.0);
  EXPECT_EQ(part.at(2), 4.0);
}

TEST(NpyRows, ATruncatedFileIsAnIoErrorBeforeAnyRowIsRead) {
  std::vector<double> v(4 * 2, 1.0);
  auto bytes = npy::encode(v.data(), 'f', 8, {4, 2});
  bytes.resize(bytes.size() - 8);
  const std::string path = write_file("rows_trunc.npy", bytes);
  EXPECT_THROW(npy::load_rows(path, "--x", 0, 1), IoError);
}

}  // namespace
}  // namespace otgpu
#endif
