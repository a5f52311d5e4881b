// SinkhornOptions::devices (multi_device.h): the rows split over the listed devices,
// one thread and one rank per entry, NCCL between distinct devices when built, the
// host-staged local group otherwise (and always for logical shards on one device).
#include "multi_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <set>
#include <thread>

#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"

namespace otgpu::dist {

namespace {

std::string list_of(const std::vector<int>& v) {
  std::string out;
  for (std::size_t k = 0; k < v.size(); ++k) {
    if (k > 0) out.push_back(',');
    out.append(std::to_string(v[k]));
  }
  return out;
}

void validate_devices(const SinkhornOptions& o, const detail::SinkhornShape& shape) {
  if (o.backend == Backend::cpu) {
    throw InvalidArgument(fmt::format(
        "devices: [{}] lists CUDA devices but backend is cpu; use backend cuda or automatic, or "
        "leave devices empty",
        list_of(o.devices)));
  }
  for (std::size_t k = 0; k < o.devices.size(); ++k) {
    if (o.devices[k] < 0) {
      throw InvalidArgument(
          fmt::format("devices[{}] is {} (CUDA device ordinals are >= 0)", k, o.devices[k]));
    }
  }
  const auto shards = static_cast<std::int64_t>(o.devices.size());
  if (shape.n < shards) {
    throw InvalidArgument(fmt::format(
        "devices: {} shards need at least one row each, but the problem has n = {} rows", shards,
        shape.n));
  }
  const int count = cuda_backend::device_count();
  for (std::size_t k = 0; k < o.devices.size(); ++k) {
    const int dev = o.devices[k];
    if (dev >= count) {
      throw DeviceUnavailable(
          fmt::format("devices[{}] is {}, but {} CUDA device{} usable here{}", k, dev, count,
                      count == 1 ? " is" : "s are",
                      count == 0 ? " (no device, or a libotgpu built without CUDA)" : ""));
    }
  }
  if (shards > 1 && shape.space != MemorySpace::host) {
    throw InvalidArgument(
        "devices: a solve split over several devices takes host tensors (each shard uploads its "
        "own rows); pass host views, or solve on one device");
  }
}

/// The rows [r.begin, r.end) of a row-indexed view (x, cost: axis rank-2; a: the last).
TensorView rows_of(const TensorView& v, int axis, RowRange r) {
  if (!v.present()) return v;
  TensorView out = v;
  const auto ax = static_cast<std::size_t>(axis);
  out.data = static_cast<const unsigned char*>(v.data) +
             r.begin * v.strides[ax] * static_cast<std::int64_t>(dtype_size(v.dtype));
  out.shape[ax] = r.size();
  return out;
}

SinkhornProblem shard_problem(const SinkhornProblem& p, RowRange r) {
  SinkhornProblem out = p;
  if (p.cost_kind == CostKind::matrix) {
    out.cost = rows_of(p.cost, p.cost.rank - 2, r);
  } else {
    out.x = rows_of(p.x, p.x.rank - 2, r);
  }
  // A present a is [n] or [B, n]: the row axis is the last. Absent: uniform 1/n of the
  // WHOLE problem, which a shard must not take as 1/n_r of its own rows.
  out.a = rows_of(p.a, p.a.rank - 1, r);
  return out;
}

/// Uniform weights made explicit (1/n of the whole problem) for shards, as one shared
/// [n] vector.
std::vector<double> uniform_a(std::int64_t n) {
  return std::vector<double>(static_cast<std::size_t>(n), 1.0 / static_cast<double>(n));
}

}  // namespace

SinkhornResult sinkhorn_devices(const SinkhornProblem& problem, const SinkhornOptions& options,
                                const detail::SinkhornShape& shape) {
  validate_devices(options, shape);
  const int G = static_cast<int>(options.devices.size());
  if (G == 1) {
    SinkhornOptions o = options;
    o.device = options.devices[0];
    o.devices.clear();
    return otgpu::sinkhorn(problem, o);
  }
  std::vector<double> a_uniform;
  SinkhornProblem whole = problem;
  if (!problem.a.present()) {
    a_uniform = uniform_a(shape.n);
    whole.a = TensorView::host(a_uniform.data(), {shape.n});
  }
  const auto B = static_cast<std::size_t>(shape.batch);
  const auto n = static_cast<std::size_t>(shape.n);
  std::vector<SinkhornResult> parts(static_cast<std::size_t>(G));
  auto body = [&](Communicator& comm) {
    const int r = comm.rank();
    const RowRange rows = row_range(shape.n, r, G);
    SinkhornOptions o = options;
    o.devices.clear();
    o.backend = Backend::cuda;
    o.device = options.devices[static_cast<std::size_t>(r)];
    // The callback is called from one thread at a time: rank 0's (the values are the
    // same on every shard; a cancellation there stops every shard).
    if (r != 0) o.progress = nullptr;
    if (!options.f_init.empty()) {
      o.f_init.clear();
      for (std::size_t b = 0; b < B; ++b) {
        const auto first =
            options.f_init.begin() +
            static_cast<std::ptrdiff_t>(b * n + static_cast<std::size_t>(rows.begin));
        o.f_init.insert(o.f_init.end(), first, first + static_cast<std::ptrdiff_t>(rows.size()));
      }
    }
    parts[static_cast<std::size_t>(r)] = dist::sinkhorn(comm, shard_problem(whole, rows), o);
  };
  std::set<int> distinct(options.devices.begin(), options.devices.end());
  if (static_cast<int>(distinct.size()) == G && nccl_built()) {
    auto comms = nccl_local(options.devices);
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(G));
    std::vector<std::thread> threads;
    for (int r = 0; r < G; ++r) {
      threads.emplace_back([&, r] {
        try {
          body(*comms[static_cast<std::size_t>(r)]);
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
  } else {
    run_local(G, body);
  }

  // f of shard r is [B, n_r]: row i of problem b goes to b * n + begin_r + i.
  std::vector<double> f(B * n);
  for (int r = 0; r < G; ++r) {
    const RowRange rows = row_range(shape.n, r, G);
    const auto len = static_cast<std::size_t>(rows.size());
    const auto& fr = parts[static_cast<std::size_t>(r)].f;
    for (std::size_t b = 0; b < B; ++b) {
      std::copy(
          fr.begin() + static_cast<std::ptrdiff_t>(b * len),
          fr.begin() + static_cast<std::ptrdiff_t>((b + 1) * len),
          f.begin() + static_cast<std::ptrdiff_t>(b * n + static_cast<std::size_t>(rows.begin)));
    }
  }
  SinkhornResult out = std::move(parts[0]);
  out.f = std::move(f);
  out.n = shape.n;
  out.device = options.devices[0];
  // The shard's kept state belongs to its rows: derived outputs of the whole problem
  // restage it (on devices[0]) from f, g and eps.
  out.state.reset();
  return out;
}

}  // namespace otgpu::dist
