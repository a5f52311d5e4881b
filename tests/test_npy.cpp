// The .npy reader and writer: every supported kind of valid file, hand-made
// corrupt and hostile images (each must give one clear error naming the file), and
// a seeded mutation fuzz loop asserting that parse() only ever returns or throws
// otgpu::Error.
#ifdef OTGPU_TEST_HAS_NPY

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "npy.h"
#include "otgpu/error.h"

namespace {

using otgpu::DType;
using Bytes = std::vector<unsigned char>;

/// A .npy image with the given version, header text (padded with spaces and '\n'
/// unless `raw`), and payload bytes.
Bytes image(int major, const std::string& dict, const Bytes& payload = {}, bool raw = false) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  if (!raw) {
    const std::size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
    header.resize(total - prefix - 1, ' ');
    header.push_back('\n');
  }
  Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), 0};
  const std::size_t len = header.size();
  for (std::size_t k = 0; k < prefix - 8; ++k)
    out.push_back(static_cast<unsigned char>(len >> (8 * k)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

template <class T>
Bytes payload_of(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Bytes byteswapped(Bytes b, std::size_t itemsize) {
  for (std::size_t k = 0; k + itemsize <= b.size(); k += itemsize) {
    std::reverse(b.begin() + static_cast<std::ptrdiff_t>(k),
                 b.begin() + static_cast<std::ptrdiff_t>(k + itemsize));
  }
  return b;
}

otgpu::npy::Array parse(const Bytes& b, const std::string& what = "--x: X.npy") {
  return otgpu::npy::parse(b.data(), b.size(), what);
}

/// Expects parse to throw exactly type E with a one-line message that names the
/// file and contains `fragment`.
template <class E>
void expect_error(const Bytes& b, const std::string& fragment) {
  try {
    (void)parse(b);
    ADD_FAILURE() << "expected an error containing '" << fragment << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--x: X.npy"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line message: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type for '" << fragment << "': " << e.what();
  }
}

const std::string kDict34 = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }";

std::vector<double> iota_d(std::size_t n) {
  std::vector<double> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = 0.5 * static_cast<double>(k) - 1.25;
  return v;
}

// ---- valid files -----------------------------------------------------------------

TEST(Npy, RoundTripShapesAndDtypes) {
  const std::vector<std::vector<std::int64_t>> shapes = {{},        {5}, {1},      {3, 4},
                                                         {2, 3, 4}, {0}, {2, 0, 3}};
  for (const auto& shape : shapes) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    const auto vd = iota_d(static_cast<std::size_t>(n));
    std::vector<float> vf(vd.begin(), vd.end());
    for (int f32 = 0; f32 < 2; ++f32) {
      const Bytes img = f32 ? otgpu::npy::encode(vf.data(), 'f', 4, shape)
                            : otgpu::npy::encode(vd.data(), 'f', 8, shape);
      ASSERT_EQ((img.size() - static_cast<std::size_t>(n) * (f32 ? 4 : 8)) % 64, 0u)
          << "data must start at a multiple of 64";
      const auto a = parse(img);
      EXPECT_EQ(a.shape, shape);
      EXPECT_EQ(a.dtype, f32 ? DType::f32 : DType::f64);
      ASSERT_EQ(a.numel(), n);
      for (std::int64_t k = 0; k < n; ++k) {
        EXPECT_EQ(a.at(k), f32 ? static_cast<double>(vf[static_cast<std::size_t>(k)])
                               : vd[static_cast<std::size_t>(k)]);
      }
    }
  }
}

TEST(Npy, HeaderVariantsNumpyAccepts) {
  const auto vals = iota_d(12);
  const Bytes payload = payload_of(vals);
  const std::vector<std::string> dicts = {
      kDict34,
      "{'shape': (3, 4), 'fortran_order': False, 'descr': '<f8'}",
      "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (3, 4)}",
      "  {  'descr' : '<f8' ,'fortran_order':False,'shape':( 3 ,4 , ) , }  ",
      "{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 4L), }",
      "{'descr': '=f8', 'fortran_order': False, 'shape': (3, 4), }",
      "{'descr': 'f8', 'fortran_order': False, 'shape': (3, 4), }",
  };
  for (int major = 1; major <= 3; ++major) {
    for (const auto& dict : dicts) {
      SCOPED_TRACE(dict + " v" + std::to_string(major));
      const auto a = parse(image(major, dict, payload));
      ASSERT_EQ(a.shape, (std::vector<std::int64_t>{3, 4}));
      ASSERT_EQ(a.dtype, DType::f64);
      for (std::int64_t k = 0; k < 12; ++k) EXPECT_EQ(a.at(k), vals[static_cast<std::size_t>(k)]);
    }
  }
  // No padding and no final newline: NumPy still reads it, so do we.
  const auto a = parse(image(1, kDict34, payload, /*raw=*/true));
  EXPECT_EQ(a.numel(), 12);
}

TEST(Npy, BigEndianIsSwapped) {
  const auto vd = iota_d(6);
  const std::vector<float> vf(vd.begin(), vd.end());
  const auto a = parse(image(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (6,), }",
                             byteswapped(payload_of(vd), 8)));
  const auto b = parse(image(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                             byteswapped(payload_of(vf), 4)));
  const auto c = parse(
      image(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", payload_of(vf)));
  for (std::int64_t k = 0; k < 6; ++k) {
    EXPECT_EQ(a.at(k), vd[static_cast<std::size_t>(k)]);
    EXPECT_EQ(b.at(k), static_cast<double>(vf[static_cast<std::size_t>(k)]));
    EXPECT_EQ(c.at(k), static_cast<double>(vf[static_cast<std::size_t>(k)]));
  }
  EXPECT_EQ(b.dtype, DType::f32);
}

TEST(Npy, ViewHasCOrderStridesAndChecksRank) {
  const auto vd = iota_d(24);
  const auto a = parse(otgpu::npy::encode(vd.data(), 'f', 8, {2, 3, 4}));
  const auto v = a.view();
  EXPECT_EQ(v.rank, 3);
  EXPECT_EQ(v.dim(1), 3);
  EXPECT_EQ(v.stride(0), 12);
  EXPECT_EQ(v.stride(1), 4);
  EXPECT_EQ(v.stride(2), 1);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(otgpu::load_as_double(v, 1, 2, 3), vd[23]);
  EXPECT_THROW((void)parse(otgpu::npy::encode(vd.data(), 'f', 8, {})).view(), otgpu::ShapeError);
  EXPECT_THROW((void)parse(otgpu::npy::encode(vd.data(), 'f', 8, {1, 2, 3, 4})).view(),
               otgpu::ShapeError);
}

TEST(Npy, HeaderLengthCap) {
  // Long (v2) headers are read up to the cap; above it they are refused before any
  // parsing, so a hostile length field cannot make the reader scan megabytes.
  const std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
  const auto vd = iota_d(2);
  std::string ok = dict;
  ok.resize(60000, ' ');
  EXPECT_EQ(parse(image(2, ok, payload_of(vd))).at(1), vd[1]);
  std::string too_long = dict;
  too_long.resize(70000, ' ');
  expect_error<otgpu::IoError>(image(2, too_long, payload_of(vd)), "exceeds the 65536-byte limit");
}

// ---- dtype errors ------------------------------------------------------------------

TEST(Npy, NonFloatDtypesAreDTypeErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"<i8", "int64 ('<i8')"}, {"<i4", "int32"},          {"|u1", "uint8"},
      {"|b1", "bool"},          {"<c16", "complex128"},    {"|O", "object"},
      {"<U5", "str"},           {"|S3", "bytes"},          {"<f2", "float16"},
      {"<f16", "float128"},     {"<M8[ns]", "datetime64"}, {"|V8", "void"},
  };
  for (const auto& [descr, name] : cases) {
    SCOPED_TRACE(descr);
    const Bytes img = image(
        1, "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (1,), }", Bytes(16, 0));
    expect_error<otgpu::DTypeError>(img, "has dtype " + name);
    expect_error<otgpu::DTypeError>(img, "expected float32 or float64");
  }
  expect_error<otgpu::DTypeError>(
      image(1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }", Bytes(8, 0)),
      "structured dtype");
}

// ---- corrupt and hostile images ------------------------------------------------------

TEST(Npy, CorruptAndHostileHeaders) {
  const Bytes data96(96, 0);
  struct Case {
    std::string name;
    Bytes img;
    std::string fragment;
  };
  auto dict = [](const std::string& shape, const std::string& descr = "<f8",
                 const std::string& fortran = "False") {
    return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  };
  Bytes hl_overflow = image(1, kDict34, data96);
  hl_overflow[8] = 0xff;
  hl_overflow[9] = 0xff;
  Bytes hl_v2_huge = image(2, kDict34, data96);
  hl_v2_huge[8] = hl_v2_huge[9] = hl_v2_huge[10] = hl_v2_huge[11] = 0xff;
  Bytes bad_version = image(1, kDict34, data96);
  bad_version[6] = 4;
  Bytes bad_minor = image(1, kDict34, data96);
  bad_minor[7] = 1;
  const Bytes magic_only = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  const Bytes valid = image(1, kDict34, data96);
  const Bytes truncated_header(valid.begin(), valid.begin() + 40);

  const std::vector<Case> cases = {
      {"empty", {}, "empty file"},
      {"bad magic", {'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0}, "not a .npy file"},
      {"magic only", magic_only, "truncated"},
      {"version 4", bad_version, "unsupported .npy format version 4.0"},
      {"version 1.1", bad_minor, "unsupported .npy format version 1.1"},
      {"header length beyond file", hl_overflow, "truncated: header length is 65535 bytes"},
      {"header length above cap", hl_v2_huge, "exceeds the 65536-byte limit"},
      {"header cut", truncated_header, "truncated"},
      {"truncated data", image(1, dict("(100, 3)"), Bytes(1200, 0)),
       "truncated: header says shape (100, 3) float64 = 2400 bytes but only 1200 follow"},
      {"trailing data", image(1, dict("(3, 4)"), Bytes(100, 0)), "trailing data"},
      {"huge shape", image(1, dict("(1000000000, 1000000000)"), data96), "truncated"},
      {"overflowing shape", image(1, dict("(4294967296, 4294967296, 4)"), data96),
       "overflows 64 bits"},
      {"dim beyond int64", image(1, dict("(99999999999999999999,)"), data96),
       "does not fit in 64 bits"},
      {"negative dim", image(1, dict("(-3, 4)"), data96), "negative dimension"},
      {"float dim", image(1, dict("(3.5, 4)"), data96), "expected ',' or ')'"},
      {"shape not a tuple", image(1, dict("[3, 4]"), data96), "expected a tuple"},
      {"fortran order", image(1, dict("(3, 4)", "<f8", "True"), data96), "C order is required"},
      {"fortran not bool", image(1, dict("(3, 4)", "<f8", "1"), data96), "True or False"},
      {"Truex", image(1, dict("(3, 4)", "<f8", "Truex"), data96), "True or False"},
      {"missing shape", image(1, "{'descr': '<f8', 'fortran_order': False}", data96),
       "missing key 'shape'"},
      {"missing descr", image(1, "{'shape': (12,), 'fortran_order': False}", data96),
       "missing key 'descr'"},
      {"duplicate key",
       image(1, "{'descr': '<f8', 'shape': (12,), 'fortran_order': False, 'shape': (12,)}", data96),
       "duplicate key 'shape'"},
      {"unknown key",
       image(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (12,), 'x': 1}", data96),
       "unexpected key 'x'"},
      {"unterminated string",
       image(1, "{'descr: '<f8', 'fortran_order': False, 'shape': (12,)}", data96), "expected ':'"},
      {"unterminated at end", image(1, "{'descr': '<f8", data96, true), "unterminated string"},
      {"garbage", image(1, "hello world", data96), "expected the header to start with '{'"},
      {"no closing brace",
       image(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (12,)", data96),
       "the header ends early"},
      {"text after dict", image(1, kDict34 + " junk", data96), "unexpected text after"},
      {"nul in header", image(1, std::string("{'descr'\0: '<f8'}", 17), data96), "byte 0x00"},
      {"unrecognized descr", image(1, dict("(12,)", "<q8"), data96), "unrecognized descr"},
      {"pipe float", image(1, dict("(12,)", "|f8"), data96), "no byte order"},
      {"long string", image(1, "{'descr': '" + std::string(1000, 'f') + "'}", data96),
       "string too long"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    expect_error<otgpu::IoError>(c.img, c.fragment);
  }
  // More dimensions than NumPy allows.
  std::string many = "(";
  for (int k = 0; k < 100; ++k) many += "1, ";
  many += ")";
  expect_error<otgpu::IoError>(image(1, dict(many), Bytes(8, 0)), "more than 64 dimensions");
}

// ---- fuzzing ---------------------------------------------------------------------------

TEST(Npy, MutationFuzzNeverCrashes) {
  std::vector<Bytes> seeds;
  const auto vd = iota_d(24);
  const std::vector<float> vf(vd.begin(), vd.end());
  seeds.push_back(otgpu::npy::encode(vd.data(), 'f', 8, {2, 3, 4}));
  seeds.push_back(otgpu::npy::encode(vf.data(), 'f', 4, {24}));
  seeds.push_back(otgpu::npy::encode(vd.data(), 'f', 8, {}));
  seeds.push_back(image(2, "{'shape': (4, 6), 'fortran_order': False, 'descr': '>f4'}",
                        byteswapped(payload_of(vf), 4)));
  seeds.push_back(
      image(3, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (24,)}", payload_of(vd)));

  std::mt19937_64 rng(20240611);
  const char* interesting = "{}()[],:'\" -0123456789LTrueFalse<>=|fi48\n\\";
  const std::size_t n_interesting = std::strlen(interesting);
  int parsed = 0, rejected = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    Bytes b = seeds[rng() % seeds.size()];
    const int n_mut = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n_mut && !b.empty(); ++k) {
      // Mutations concentrate on the first 128 bytes, where the header is.
      const std::size_t span = std::min<std::size_t>(b.size(), (rng() % 4 == 0) ? b.size() : 128);
      const std::size_t pos = rng() % span;
      switch (rng() % 7) {
        case 0:
          b[pos] = static_cast<unsigned char>(rng());
          break;
        case 1:
          b[pos] ^= static_cast<unsigned char>(1u << (rng() % 8));
          break;
        case 2:
          b.resize(pos);
          break;
        case 3:
          b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos),
                   static_cast<unsigned char>(interesting[rng() % n_interesting]));
          break;
        case 4:
          b.erase(b.begin() + static_cast<std::ptrdiff_t>(pos));
          break;
        case 5:
          b[pos] = static_cast<unsigned char>(interesting[rng() % n_interesting]);
          break;
        case 6: {  // rewrite the header length field
          if (b.size() > 10) {
            b[8] = static_cast<unsigned char>(rng());
            b[9] = static_cast<unsigned char>(rng() % 3);
          }
          break;
        }
      }
    }
    try {
      const auto a = otgpu::npy::parse(b.data(), b.size(), "fuzz");
      // Whatever parsed must be self-consistent and within the image.
      ASSERT_EQ(a.bytes.size(), static_cast<std::size_t>(a.numel()) * otgpu::dtype_size(a.dtype));
      ASSERT_LE(a.bytes.size(), b.size());
      ++parsed;
    } catch (const otgpu::Error& e) {
      const std::string msg = e.what();
      ASSERT_EQ(msg.rfind("fuzz", 0), 0u) << msg;
      ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-otgpu exception: " << e.what();
    }
  }
  // The loop must exercise both outcomes, or it is not testing anything.
  EXPECT_GT(parsed, 100);
  EXPECT_GT(rejected, 10000);
}

// ---- files --------------------------------------------------------------------------------

class NpyFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("otgpu_npy_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

template <class E>
void expect_load_error(const std::string& path, const std::string& fragment) {
  try {
    (void)otgpu::npy::load(path, "--x");
    ADD_FAILURE() << "expected an error for " << path;
  } catch (const E& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("--x: " + path, 0), 0u) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST_F(NpyFiles, SaveThenLoad) {
  const auto vd = iota_d(12);
  const std::vector<float> vf(vd.begin(), vd.end());
  const std::vector<std::int64_t> vi = {-3, 0, 7, std::int64_t{1} << 40};
  otgpu::npy::save(path("d.npy"), vd.data(), {3, 4});
  otgpu::npy::save(path("f.npy"), vf.data(), {12});
  otgpu::npy::save(path("i.npy"), vi.data(), {2, 2});
  const auto d = otgpu::npy::load(path("d.npy"), "--x");
  const auto f = otgpu::npy::load(path("f.npy"), "--x");
  EXPECT_EQ(d.shape, (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(f.dtype, DType::f32);
  EXPECT_EQ(d.source, "--x: " + path("d.npy"));
  for (std::int64_t k = 0; k < 12; ++k) {
    EXPECT_EQ(d.at(k), vd[static_cast<std::size_t>(k)]);
    EXPECT_EQ(f.at(k), static_cast<double>(vf[static_cast<std::size_t>(k)]));
  }
  EXPECT_EQ(std::filesystem::file_size(path("d.npy")) % 64, (12 * 8) % 64);
  // int64 is written for sample indices but is never a valid input.
  expect_load_error<otgpu::DTypeError>(path("i.npy"), "int64 ('<i8')");
  std::FILE* in = std::fopen(path("i.npy").c_str(), "rb");
  ASSERT_NE(in, nullptr);
  std::int64_t last = 0;
  ASSERT_EQ(std::fseek(in, -8, SEEK_END), 0);
  ASSERT_EQ(std::fread(&last, 8, 1, in), 1u);
  std::fclose(in);
  EXPECT_EQ(last, vi[3]);
}

TEST_F(NpyFiles, MissingDirectoryEmptyAndSpecialFiles) {
  expect_load_error<otgpu::IoError>(path("missing.npy"), "No such file or directory");
  std::filesystem::create_directories(path("sub.npy"));
  expect_load_error<otgpu::IoError>(path("sub.npy"), "is a directory");
  { std::ofstream(path("empty.npy")); }
  expect_load_error<otgpu::IoError>(path("empty.npy"), "empty file");
  ASSERT_EQ(::mkfifo(path("fifo.npy").c_str(), 0600), 0);
  expect_load_error<otgpu::IoError>(path("fifo.npy"), "not a regular file");  // must not block
  if (::geteuid() != 0) {                                                     // root reads anything
    otgpu::npy::save(path("locked.npy"), iota_d(2).data(), {2});
    ::chmod(path("locked.npy").c_str(), 0);
    expect_load_error<otgpu::IoError>(path("locked.npy"), "Permission denied");
  }
}

TEST_F(NpyFiles, TruncatedFileNamesSizes) {
  const auto vd = iota_d(300);
  const Bytes img = otgpu::npy::encode(vd.data(), 'f', 8, {100, 3});
  {
    std::ofstream out(path("t.npy"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(img.data()),
              static_cast<std::streamsize>(img.size() - 1200));
  }
  expect_load_error<otgpu::IoError>(
      path("t.npy"),
      "truncated: header says shape (100, 3) float64 = 2400 bytes but only 1200 follow");
}

TEST_F(NpyFiles, SaveFailureNamesPath) {
  const auto vd = iota_d(2);
  const std::string bad = path("no/such/dir/out.npy");
  try {
    otgpu::npy::save(bad, vd.data(), {2});
    ADD_FAILURE() << "expected IoError";
  } catch (const otgpu::IoError& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
}

}  // namespace

#endif  // OTGPU_TEST_HAS_NPY
