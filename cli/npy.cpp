// The .npy reader and writer. The reader treats every byte of the file as
// hostile: sizes are checked against the file before anything is allocated, all
// arithmetic on header values is overflow-checked, and the header grammar is a
// small hand-written parser (no recursion, bounded lengths) rather than a general
// Python literal evaluator.
#include "npy.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

#include "otgpu/error.h"

namespace otgpu::npy {

namespace {

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr std::size_t kMagicAndVersion = 8;
constexpr bool kLittleEndianHost = std::endian::native == std::endian::little;
// Longer strings than this in a header are not descr values of any real dtype.
constexpr std::size_t kMaxStringBytes = 256;

/// One character of a hostile header, quoted so that a message stays on one line.
std::string quote_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return fmt::format("'{}'", c);
  return fmt::format("byte 0x{:02x}", u);
}

/// A header string for a message: printable ASCII only, bounded length.
std::string sanitize(std::string_view s) {
  std::string out;
  for (const char c : s.substr(0, 40)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? std::string(1, c) : fmt::format("\\x{:02x}", u);
  }
  if (s.size() > 40) out += "...";
  return out;
}

struct Header {
  DType dtype = DType::f64;
  bool byteswap = false;
  std::vector<std::int64_t> shape;
  std::size_t data_offset = 0;
  std::uint64_t data_bytes = 0;
};

struct DictFields {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

/// Parses the Python dict literal of a .npy header:
///   {'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }
/// with keys in any order, either quote style, optional trailing commas and
/// surrounding whitespace. Anything else is a corrupt header.
class DictParser {
 public:
  DictParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  DictFields run() {
    DictFields out;
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{', "the header to start with '{'");
    for (;;) {
      skip_ws();
      if (at('}')) break;
      if (!at('\'') && !at('"')) fail("expected a quoted key or '}'");
      const std::size_t key_pos = pos_;
      const std::string key = parse_string();
      skip_ws();
      expect(':', fmt::format("':' after key '{}'", sanitize(key)));
      skip_ws();
      auto once = [&](bool& seen) {
        if (seen) fail(fmt::format("duplicate key '{}'", sanitize(key)), key_pos);
        seen = true;
      };
      if (key == "descr") {
        once(have_descr);
        if (at('[')) {
          throw DTypeError(fmt::format(
              "{} has a structured dtype (a list descr); expected float32 or float64", what_));
        }
        if (!at('\'') && !at('"')) fail("expected a quoted string for 'descr'");
        out.descr = parse_string();
      } else if (key == "fortran_order") {
        once(have_fortran);
        out.fortran_order = parse_bool();
      } else if (key == "shape") {
        once(have_shape);
        out.shape = parse_shape();
      } else {
        fail(fmt::format("unexpected key '{}'", sanitize(key)), key_pos);
      }
      skip_ws();
      if (at(',')) {
        ++pos_;
        continue;
      }
      if (at('}')) break;
      fail("expected ',' or '}' after a value");
    }
    ++pos_;  // the '}'
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the closing '}'");
    if (!have_descr) fail("missing key 'descr'");
    if (!have_fortran) fail("missing key 'fortran_order'");
    if (!have_shape) fail("missing key 'shape'");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& msg, std::size_t where) const {
    throw IoError(fmt::format("{}: corrupt .npy header: {} (header byte {})", what_, msg, where));
  }
  [[noreturn]] void fail(const std::string& msg) const {
    if (pos_ >= s_.size()) {
      throw IoError(fmt::format("{}: corrupt .npy header: {} (the header ends early)", what_, msg));
    }
    fail(fmt::format("{}, found {}", msg, quote_char(s_[pos_])), pos_);
  }

  bool at(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c, const std::string& what) {
    if (!at(c)) fail("expected " + what);
    ++pos_;
  }

  std::string parse_string() {
    const char quote = s_[pos_];
    const std::size_t start = pos_++;
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string", start);
      char c = s_[pos_++];
      if (c == quote) return out;
      if (c == '\\') {
        if (pos_ >= s_.size()) fail("unterminated string", start);
        c = s_[pos_++];
      }
      if (out.size() >= kMaxStringBytes) fail("string too long", start);
      out.push_back(c);
    }
  }

  bool parse_bool() {
    auto word = [&](std::string_view w) {
      if (s_.substr(pos_, w.size()) != w) return false;
      const std::size_t end = pos_ + w.size();
      // "Truex" is not True.
      if (end < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[end])) || s_[end] == '_'))
        return false;
      pos_ = end;
      return true;
    };
    if (word("True")) return true;
    if (word("False")) return false;
    fail("expected True or False for 'fortran_order'");
  }

  std::int64_t parse_dim() {
    if (at('-')) fail("negative dimension in 'shape'");
    const std::size_t start = pos_;
    std::int64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const int digit = s_[pos_] - '0';
      if (__builtin_mul_overflow(v, std::int64_t{10}, &v) ||
          __builtin_add_overflow(v, std::int64_t{digit}, &v)) {
        fail("dimension in 'shape' does not fit in 64 bits", start);
      }
      ++pos_;
    }
    if (pos_ == start) fail("expected a non-negative integer in 'shape'");
    if (at('L') || at('l')) ++pos_;  // Python 2 long literals, as NumPy's reader accepts
    return v;
  }

  std::vector<std::int64_t> parse_shape() {
    expect('(', "a tuple '(' for 'shape'");
    std::vector<std::int64_t> dims;
    skip_ws();
    if (at(')')) {
      ++pos_;
      return dims;
    }
    for (;;) {
      skip_ws();
      if (dims.size() >= kMaxDims) fail(fmt::format("more than {} dimensions", kMaxDims));
      dims.push_back(parse_dim());
      skip_ws();
      if (at(',')) {
        ++pos_;
        skip_ws();
        if (at(')')) break;
        continue;
      }
      if (at(')')) break;
      fail("expected ',' or ')' in 'shape'");
    }
    ++pos_;  // the ')'
    return dims;
  }

  std::string_view s_;
  const std::string& what_;
  std::size_t pos_ = 0;
};

/// Interprets a descr string: float32/float64 in a stated byte order, or a
/// DTypeError naming what the file holds.
void decode_descr(const std::string& descr, const std::string& what, Header& h) {
  std::string_view d = descr;
  char order = '=';
  if (!d.empty() && (d[0] == '<' || d[0] == '>' || d[0] == '=' || d[0] == '|')) {
    order = d[0];
    d.remove_prefix(1);
  }
  auto unrecognized = [&]() -> IoError {
    return IoError(
        fmt::format("{}: corrupt .npy header: unrecognized descr '{}'", what, sanitize(descr)));
  };
  // datetime64/timedelta64 carry a unit ('<M8[ns]'); only the kind matters here.
  if (const auto bracket = d.find('['); bracket != std::string_view::npos && !d.empty() &&
                                        (d[0] == 'M' || d[0] == 'm') && d.back() == ']') {
    d = d.substr(0, bracket);
  }
  if (d.empty() || d.size() > 4) throw unrecognized();
  const char kind = d[0];
  int itemsize = 0;
  for (const char c : d.substr(1)) {
    if (c < '0' || c > '9') throw unrecognized();
    itemsize = itemsize * 10 + (c - '0');
  }
  if (kind == 'f' && (itemsize == 4 || itemsize == 8)) {
    if (order == '|') {
      throw IoError(fmt::format(
          "{}: corrupt .npy header: descr '{}' has no byte order ('|' is for 1-byte types)", what,
          sanitize(descr)));
    }
    h.dtype = itemsize == 4 ? DType::f32 : DType::f64;
    h.byteswap = (order == '<' && !kLittleEndianHost) || (order == '>' && kLittleEndianHost);
    return;
  }
  std::string name;
  switch (kind) {
    case 'i':
      name = fmt::format("int{}", 8 * itemsize);
      break;
    case 'u':
      name = fmt::format("uint{}", 8 * itemsize);
      break;
    case 'b':
    case '?':
      name = "bool";
      break;
    case 'f':
      name = fmt::format("float{}", 8 * itemsize);
      break;
    case 'c':
      name = fmt::format("complex{}", 8 * itemsize);
      break;
    case 'O':
      name = "object";
      break;
    case 'S':
    case 'a':
      name = "bytes";
      break;
    case 'U':
      name = "str";
      break;
    case 'V':
      name = "void";
      break;
    case 'M':
      name = "datetime64";
      break;
    case 'm':
      name = "timedelta64";
      break;
    default:
      throw unrecognized();
  }
  throw DTypeError(fmt::format("{} has dtype {} ('{}'); expected float32 or float64", what, name,
                               sanitize(descr)));
}

/// Reads the fixed prefix and the header dict from the first `avail` bytes of a
/// file of `total` bytes, and checks that exactly the announced data follows.
Header parse_header(const unsigned char* p, std::size_t avail, std::uint64_t total,
                    const std::string& what) {
  if (total == 0) throw IoError(fmt::format("{}: empty file (not a .npy file)", what));
  if (avail < sizeof(kMagic) || std::memcmp(p, kMagic, sizeof(kMagic)) != 0) {
    throw IoError(fmt::format("{}: not a .npy file (bad magic bytes)", what));
  }
  if (avail < kMagicAndVersion) {
    throw IoError(fmt::format("{}: truncated: the file ends inside the format version", what));
  }
  const int major = p[6], minor = p[7];
  if (major < 1 || major > 3 || minor != 0) {
    throw IoError(fmt::format("{}: unsupported .npy format version {}.{} (1.0, 2.0, 3.0 are read)",
                              what, major, minor));
  }
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (avail < kMagicAndVersion + len_bytes) {
    throw IoError(fmt::format("{}: truncated: the file ends inside the header length", what));
  }
  std::uint64_t header_len = 0;
  for (std::size_t k = 0; k < len_bytes; ++k) {
    header_len |= static_cast<std::uint64_t>(p[kMagicAndVersion + k]) << (8 * k);
  }
  const std::size_t prefix = kMagicAndVersion + len_bytes;
  if (header_len > kMaxHeaderBytes) {
    throw IoError(fmt::format("{}: header length {} exceeds the {}-byte limit", what, header_len,
                              kMaxHeaderBytes));
  }
  if (prefix + header_len > total) {
    throw IoError(fmt::format("{}: truncated: header length is {} bytes but only {} follow", what,
                              header_len, total - prefix));
  }
  // The caller reads at least prefix + kMaxHeaderBytes bytes when the file has them.
  if (prefix + header_len > avail) {
    throw IoError(fmt::format("{}: internal error: header not fully read", what));
  }
  const std::string_view text(reinterpret_cast<const char*>(p + prefix),
                              static_cast<std::size_t>(header_len));
  const DictFields fields = DictParser(text, what).run();

  Header h;
  decode_descr(fields.descr, what, h);
  if (fields.fortran_order) {
    throw IoError(
        fmt::format("{}: Fortran-ordered data (fortran_order True); C order is required "
                    "(save with numpy.ascontiguousarray)",
                    what));
  }
  h.shape = fields.shape;
  h.data_offset = prefix + static_cast<std::size_t>(header_len);

  const std::int64_t itemsize = static_cast<std::int64_t>(dtype_size(h.dtype));
  const std::string described = shape_to_string(h.shape) + " " + std::string(to_string(h.dtype));
  std::int64_t bytes = itemsize;
  for (const std::int64_t dim : h.shape) {
    if (__builtin_mul_overflow(bytes, dim, &bytes)) {
      throw IoError(
          fmt::format("{}: header says shape {}, whose size overflows 64 bits", what, described));
    }
  }
  h.data_bytes = static_cast<std::uint64_t>(bytes);
  const std::uint64_t remaining = total - h.data_offset;
  if (h.data_bytes > remaining) {
    throw IoError(fmt::format("{}: truncated: header says shape {} = {} bytes but only {} follow",
                              what, described, h.data_bytes, remaining));
  }
  if (h.data_bytes < remaining) {
    throw IoError(fmt::format("{}: trailing data: header says shape {} = {} bytes but {} follow",
                              what, described, h.data_bytes, remaining));
  }
  return h;
}

void byteswap_elements(std::vector<unsigned char>& bytes, std::size_t itemsize) {
  for (std::size_t k = 0; k + itemsize <= bytes.size(); k += itemsize) {
    std::reverse(bytes.begin() + static_cast<std::ptrdiff_t>(k),
                 bytes.begin() + static_cast<std::ptrdiff_t>(k + itemsize));
  }
}

Array make_array(const Header& h, const std::string& what) {
  Array a;
  a.dtype = h.dtype;
  a.shape = h.shape;
  a.source = what;
  return a;
}

std::string message_prefix(const std::string& path, const std::string& what) {
  return what.empty() ? printable_path(path) : fmt::format("{}: {}", what, printable_path(path));
}

/// Closes a POSIX file descriptor on every exit path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

/// Reads exactly `size` bytes at `offset`; returns the count read (short at EOF).
std::size_t read_at(int fd, unsigned char* buf, std::size_t size, std::uint64_t offset,
                    const std::string& what) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t r = ::pread(fd, buf + done, size - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("{}: read failed: {}", what, std::strerror(errno)));
    }
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

std::vector<unsigned char> header_bytes(char kind, std::size_t itemsize,
                                        const std::vector<std::int64_t>& shape) {
  const std::string descr = fmt::format("{}{}{}", kLittleEndianHost ? '<' : '>', kind, itemsize);
  const std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
                                       descr, shape_to_string(shape));
  // Data starts on a 64-byte boundary (NumPy's own choice: good for mmap and SIMD).
  auto padded = [&](std::size_t prefix) {
    const std::size_t unpadded = prefix + dict.size() + 1;  // + '\n'
    return (unpadded + 63) / 64 * 64 - prefix;
  };
  int major = 1;
  std::size_t prefix = kMagicAndVersion + 2;
  std::size_t len = padded(prefix);
  if (len > 0xffff) {
    major = 2;
    prefix = kMagicAndVersion + 4;
    len = padded(prefix);
  }
  std::vector<unsigned char> out(kMagic, kMagic + sizeof(kMagic));
  out.push_back(static_cast<unsigned char>(major));
  out.push_back(0);
  for (std::size_t k = 0; k < prefix - kMagicAndVersion; ++k) {
    out.push_back(static_cast<unsigned char>((len >> (8 * k)) & 0xff));
  }
  out.insert(out.end(), dict.begin(), dict.end());
  out.resize(prefix + len - 1, ' ');
  out.push_back('\n');
  return out;
}

std::size_t checked_numel(const std::vector<std::int64_t>& shape, std::size_t itemsize) {
  std::int64_t n = 1;
  for (const std::int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(n, dim, &n)) {
      throw InvalidArgument(fmt::format("npy::save: invalid shape {}", shape_to_string(shape)));
    }
  }
  std::int64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<std::int64_t>(itemsize), &bytes)) {
    throw InvalidArgument(fmt::format("npy::save: shape {} too large", shape_to_string(shape)));
  }
  return static_cast<std::size_t>(n);
}

void save_impl(const std::string& path, const void* data, char kind, std::size_t itemsize,
               const std::vector<std::int64_t>& shape) {
  const std::size_t n = checked_numel(shape, itemsize);
  const auto header = header_bytes(kind, itemsize, shape);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    throw IoError(
        fmt::format("{}: cannot open for writing: {}", printable_path(path), std::strerror(errno)));
  }
  errno = 0;
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  if (ok && n > 0) ok = std::fwrite(data, itemsize, n, f) == n;
  const int saved_errno = errno;
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    const int err = saved_errno != 0 ? saved_errno : errno;
    std::remove(path.c_str());  // no half-written file that looks valid
    throw IoError(fmt::format("{}: write failed: {}", printable_path(path), std::strerror(err)));
  }
}

}  // namespace

std::string printable_path(const std::string& path) {
  std::string out;
  out.reserve(path.size());
  for (const char c : path) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u == 0x7f) ? fmt::format("\\x{:02x}", u) : std::string(1, c);
  }
  return out;
}

std::string shape_to_string(const std::vector<std::int64_t>& shape) {
  if (shape.empty()) return "()";
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  std::string s = "(";
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + ")";
}

std::int64_t Array::numel() const {
  std::int64_t n = 1;
  for (const std::int64_t dim : shape) n *= dim;  // cannot overflow: checked when read
  return n;
}

std::string Array::describe() const {
  return shape_to_string(shape) + " " + std::string(to_string(dtype));
}

TensorView Array::view() const {
  if (shape.empty() || shape.size() > static_cast<std::size_t>(TensorView::kMaxRank)) {
    throw ShapeError(fmt::format("{}: has shape {} (rank {}); expected rank 1 to {}", source,
                                 shape_to_string(shape), shape.size(), TensorView::kMaxRank));
  }
  TensorView v;
  v.data = bytes.data();
  v.dtype = dtype;
  v.space = MemorySpace::host;
  v.rank = static_cast<int>(shape.size());
  std::int64_t stride = 1;
  for (int k = v.rank - 1; k >= 0; --k) {
    const auto kk = static_cast<std::size_t>(k);
    v.shape[kk] = shape[kk];
    v.strides[kk] = stride;
    stride *= shape[kk];
  }
  return v;
}

double Array::at(std::int64_t k) const {
  const auto off = static_cast<std::size_t>(k) * dtype_size(dtype);
  if (dtype == DType::f32) {
    float v;
    std::memcpy(&v, bytes.data() + off, sizeof v);
    return v;
  }
  double v;
  std::memcpy(&v, bytes.data() + off, sizeof v);
  return v;
}

Array parse(const unsigned char* data, std::size_t size, const std::string& what) {
  const Header h = parse_header(data, size, size, what);
  Array a = make_array(h, what);
  a.bytes.assign(data + h.data_offset, data + h.data_offset + h.data_bytes);
  if (h.byteswap) byteswap_elements(a.bytes, dtype_size(h.dtype));
  return a;
}

namespace {

/// An open regular .npy file and its checked header.
struct OpenNpy {
  std::unique_ptr<Fd> fd;
  Header header;
  std::string prefix;
};

OpenNpy open_npy(const std::string& path, const std::string& what) {
  OpenNpy f;
  f.prefix = message_prefix(path, what);
  const std::string& prefix = f.prefix;
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is rejected below.
  f.fd = std::make_unique<Fd>(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  const int fd = f.fd->get();
  if (fd < 0) {
    throw IoError(fmt::format("{}: cannot open: {}", prefix, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw IoError(fmt::format("{}: cannot stat: {}", prefix, std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode))
    throw IoError(fmt::format("{}: is a directory, not a .npy file", prefix));
  if (!S_ISREG(st.st_mode)) {
    throw IoError(fmt::format("{}: not a regular file (pipes and devices are not read)", prefix));
  }
  const auto total = static_cast<std::uint64_t>(st.st_size);
  // Enough for the largest header we accept; never more than the file.
  const std::size_t head_size = static_cast<std::size_t>(
      std::min<std::uint64_t>(total, kMagicAndVersion + 4 + kMaxHeaderBytes));
  std::vector<unsigned char> head(head_size);
  if (read_at(fd, head.data(), head_size, 0, prefix) != head_size) {
    throw IoError(fmt::format("{}: the file shrank while being read", prefix));
  }
  f.header = parse_header(head.data(), head_size, total, prefix);
  return f;
}

}  // namespace

Array load(const std::string& path, const std::string& what) {
  const OpenNpy f = open_npy(path, what);
  const Header& h = f.header;
  Array a = make_array(h, f.prefix);
  a.bytes.resize(static_cast<std::size_t>(h.data_bytes));
  if (read_at(f.fd->get(), a.bytes.data(), a.bytes.size(), h.data_offset, f.prefix) !=
      a.bytes.size()) {
    throw IoError(fmt::format("{}: the file shrank while being read", f.prefix));
  }
  if (h.byteswap) byteswap_elements(a.bytes, dtype_size(h.dtype));
  return a;
}

std::vector<std::int64_t> load_shape(const std::string& path, const std::string& what) {
  return open_npy(path, what).header.shape;
}

Array load_rows(const std::string& path, const std::string& what, std::int64_t begin,
                std::int64_t end) {
  const OpenNpy f = open_npy(path, what);
  const Header& h = f.header;
  if (h.shape.empty()) {
    throw IoError(fmt::format("{}: a 0-d array has no rows to read", f.prefix));
  }
  const std::int64_t rows = h.shape[0];
  if (begin < 0 || end < begin || end > rows) {
    throw ShapeError(fmt::format("{}: rows [{}, {}) asked of {} rows (shape {})", f.prefix, begin,
                                 end, rows, shape_to_string(h.shape)));
  }
  // C order: row i is the contiguous block of row_bytes at data_offset + i * row_bytes;
  // only this block is read (pread at its offset), not the whole file.
  const std::uint64_t row_bytes = rows > 0 ? h.data_bytes / static_cast<std::uint64_t>(rows) : 0;
  Array a = make_array(h, f.prefix);
  a.shape[0] = end - begin;
  a.bytes.resize(static_cast<std::size_t>(row_bytes * static_cast<std::uint64_t>(end - begin)));
  const std::uint64_t offset = h.data_offset + row_bytes * static_cast<std::uint64_t>(begin);
  if (read_at(f.fd->get(), a.bytes.data(), a.bytes.size(), offset, f.prefix) != a.bytes.size()) {
    throw IoError(fmt::format("{}: the file shrank while being read", f.prefix));
  }
  if (h.byteswap) byteswap_elements(a.bytes, dtype_size(h.dtype));
  return a;
}

std::vector<unsigned char> encode(const void* data, char kind, std::size_t itemsize,
                                  const std::vector<std::int64_t>& shape) {
  const std::size_t n = checked_numel(shape, itemsize);
  auto out = header_bytes(kind, itemsize, shape);
  const auto* p = static_cast<const unsigned char*>(data);
  if (n > 0) out.insert(out.end(), p, p + n * itemsize);
  return out;
}

void save(const std::string& path, const double* data, const std::vector<std::int64_t>& shape) {
  save_impl(path, data, 'f', sizeof(double), shape);
}
void save(const std::string& path, const float* data, const std::vector<std::int64_t>& shape) {
  save_impl(path, data, 'f', sizeof(float), shape);
}
void save(const std::string& path, const std::int64_t* data,
          const std::vector<std::int64_t>& shape) {
  save_impl(path, data, 'i', sizeof(std::int64_t), shape);
}

}  // namespace otgpu::npy
