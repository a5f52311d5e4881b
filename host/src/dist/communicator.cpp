// Communicator-independent pieces of otgpu/dist.h: the row split, the row layout and
// gather, and the agreement on errors before a collective solve.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include "otgpu/dist.h"
#include "otgpu/error.h"

namespace otgpu::dist {

void Communicator::allreduce_device(void*, std::int64_t, DType, ReduceOp, void*) {
  throw InvalidArgument(fmt::format(
      "allreduce_device: the {} communicator reduces host buffers only (device buffers need "
      "the NCCL communicator)",
      name()));
}

RowRange row_range(std::int64_t n, int rank, int size) {
  if (size < 1) throw InvalidArgument(fmt::format("row_range: size is {} (must be >= 1)", size));
  if (rank < 0 || rank >= size) {
    throw InvalidArgument(fmt::format("row_range: rank is {} (must be in [0, {}))", rank, size));
  }
  if (n < size) {
    throw InvalidArgument(fmt::format(
        "row_range: n = {} rows cannot be split over {} ranks (every rank needs at least one "
        "row)",
        n, size));
  }
  const std::int64_t base = n / size, extra = n % size, r = rank;
  RowRange out;
  out.begin = r * base + std::min(r, extra);
  out.end = out.begin + base + (r < extra ? 1 : 0);
  return out;
}

std::int64_t RowLayout::total() const noexcept {
  std::int64_t t = 0;
  for (auto c : counts) t += c;
  return t;
}

std::int64_t RowLayout::offset(int rank) const noexcept {
  std::int64_t t = 0;
  for (int r = 0; r < rank && r < static_cast<int>(counts.size()); ++r) {
    t += counts[static_cast<std::size_t>(r)];
  }
  return t;
}

RowLayout row_layout(Communicator& comm, std::int64_t local_rows) {
  // Row counts stay exact in a double below 2^53.
  std::vector<double> all(static_cast<std::size_t>(comm.size()));
  const auto mine = static_cast<double>(local_rows);
  comm.allgather(&mine, 1, all.data());
  RowLayout layout;
  layout.counts.reserve(all.size());
  for (double v : all) layout.counts.push_back(static_cast<std::int64_t>(v));
  return layout;
}

std::vector<double> allgather_rows(Communicator& comm, const std::vector<double>& local,
                                   std::int64_t width) {
  if (width < 1 || static_cast<std::int64_t>(local.size()) % width != 0) {
    throw InvalidArgument(
        fmt::format("allgather_rows: local size {} is not a whole number of rows of width {}",
                    local.size(), width));
  }
  const RowLayout layout = row_layout(comm, static_cast<std::int64_t>(local.size()) / width);
  const std::int64_t most = *std::max_element(layout.counts.begin(), layout.counts.end());
  // The primitive gathers equal blocks: pad every block to the longest.
  std::vector<double> send(static_cast<std::size_t>(most * width), 0.0);
  std::copy(local.begin(), local.end(), send.begin());
  std::vector<double> recv(static_cast<std::size_t>(most * width * comm.size()));
  comm.allgather(send.data(), most * width, recv.data());
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(layout.total() * width));
  for (int r = 0; r < comm.size(); ++r) {
    const auto begin = recv.begin() + static_cast<std::ptrdiff_t>(r * most * width);
    out.insert(
        out.end(), begin,
        begin + static_cast<std::ptrdiff_t>(layout.counts[static_cast<std::size_t>(r)] * width));
  }
  return out;
}

void agree(Communicator& comm, const std::function<void()>& body) {
  std::exception_ptr error;
  std::string message;
  try {
    body();
  } catch (const std::exception& e) {
    error = std::current_exception();
    message = e.what();
  } catch (...) {
    error = std::current_exception();
    message = "unknown error";
  }
  // The lowest failing rank, as a max over -rank (no failure: -size).
  const double lowest = -comm.allreduce(
      error ? -static_cast<double>(comm.rank()) : -static_cast<double>(comm.size()), ReduceOp::max);
  const int failed = static_cast<int>(lowest);
  if (failed >= comm.size()) return;
  double len = static_cast<double>(message.size());
  comm.broadcast(&len, sizeof len, failed);
  std::string text(static_cast<std::size_t>(len), '\0');
  if (comm.rank() == failed) text = message;
  if (!text.empty()) comm.broadcast(text.data(), static_cast<std::int64_t>(text.size()), failed);
  if (comm.rank() == failed) std::rethrow_exception(error);
  throw InvalidArgument(fmt::format("rank {}: {}", failed, text));
}

}  // namespace otgpu::dist
