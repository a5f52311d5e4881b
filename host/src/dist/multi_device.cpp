// SinkhornOptions::devices (multi_device.h): the rows split over the listed devices,
// one thread and one rank per entry, NCCL between distinct devices when built, the
// host-staged local group otherwise (and always for logical shards on one device).
// The result keeps every shard's state (DevicesState); its derived outputs run each
// shard's rows on that shard's device, one thread per shard, as the solve does.
#include "multi_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <functional>
#include <set>
#include <thread>

#include "dist_cuda.h"
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
  // The shard views must outlive the solve: the kept shard states are matched against
  // them (pointers included) when the derived outputs run.
  auto st = std::make_unique<DevicesState>();
  st->key = problem;
  st->devices = options.devices;
  SinkhornProblem whole = problem;
  if (!problem.a.present()) {
    st->a_uniform = uniform_a(shape.n);
    whole.a = TensorView::host(st->a_uniform.data(), {shape.n});
  }
  for (int r = 0; r < G; ++r) {
    st->rows.push_back(row_range(shape.n, r, G));
    st->local.push_back(shard_problem(whole, st->rows.back()));
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
    const auto k = static_cast<std::size_t>(r);
    parts[k] = dist::sinkhorn(comm, st->local[k], o);
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
  SinkhornResult out = parts[0];
  out.f = std::move(f);
  out.n = shape.n;
  out.device = options.devices[0];
  // Each shard's own state stays on its device; the combined one replaces shard 0's.
  st->shards = std::move(parts);
  out.state = wrap_devices_state(std::move(st));
  return out;
}

namespace {

/// The deleter type that tags a DevicesState (devices_state()).
struct DevicesStateOwner {
  const DevicesState* state = nullptr;
  void operator()(const void*) const noexcept { delete state; }
};

const DevicesState& matching(const SinkhornProblem& problem, const DevicesState& st,
                             const char* what) {
  if (!cuda_backend::same_problem(st.key, problem)) {
    throw InvalidArgument(fmt::format(
        "{}: result comes from a solve over devices [{}] of other views than this problem (its "
        "kept shard states hold that problem's rows); pass the very problem it was solved for, "
        "or solve this one",
        what, list_of(st.devices)));
  }
  return st;
}

}  // namespace

std::shared_ptr<const void> wrap_devices_state(std::unique_ptr<DevicesState> st) {
  const DevicesState* p = st.release();
  return std::shared_ptr<const void>(p, DevicesStateOwner{p});
}

const DevicesState* devices_state(const SinkhornResult& result) noexcept {
  const auto* owner = std::get_deleter<DevicesStateOwner>(result.state);
  return owner != nullptr ? owner->state : nullptr;
}

template <class Out>
std::vector<Out> concat_shards(const std::vector<RowRange>& rows, std::int64_t batch,
                               std::int64_t n, std::int64_t per,
                               const std::function<std::vector<Out>(std::size_t)>& part) {
  const std::size_t G = rows.size();
  std::vector<std::vector<Out>> parts(G);
  std::vector<std::exception_ptr> errors(G);
  {
    std::vector<std::thread> threads;
    threads.reserve(G);
    for (std::size_t r = 0; r < G; ++r) {
      threads.emplace_back([&, r] {
        try {
          parts[r] = part(r);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  const auto B = static_cast<std::size_t>(batch);
  const auto row = static_cast<std::size_t>(per);
  const auto total = static_cast<std::size_t>(n) * row;
  std::vector<Out> out(B * total);
  for (std::size_t r = 0; r < G; ++r) {
    const auto len = static_cast<std::size_t>(rows[r].size()) * row;
    const auto begin = static_cast<std::size_t>(rows[r].begin) * row;
    if (parts[r].size() != B * len) {
      throw Error(fmt::format("devices: shard {} returned {} values for its {} rows, expected {}",
                              r, parts[r].size(), rows[r].size(), B * len));
    }
    for (std::size_t b = 0; b < B; ++b) {
      std::copy(parts[r].begin() + static_cast<std::ptrdiff_t>(b * len),
                parts[r].begin() + static_cast<std::ptrdiff_t>((b + 1) * len),
                out.begin() + static_cast<std::ptrdiff_t>(b * total + begin));
    }
  }
  return out;
}

template std::vector<double> concat_shards<double>(
    const std::vector<RowRange>&, std::int64_t, std::int64_t, std::int64_t,
    const std::function<std::vector<double>(std::size_t)>&);
template std::vector<std::int64_t> concat_shards<std::int64_t>(
    const std::vector<RowRange>&, std::int64_t, std::int64_t, std::int64_t,
    const std::function<std::vector<std::int64_t>(std::size_t)>&);

namespace {

/// Shard r's shape: the whole problem's with its rows.
detail::SinkhornShape shard_shape(const detail::SinkhornShape& shape, const DevicesState& st,
                                  std::size_t r) {
  detail::SinkhornShape sh = shape;
  sh.n = st.rows[r].size();
  return sh;
}

}  // namespace

std::vector<double> barycentric_map_devices(const SinkhornProblem& problem, const DevicesState& st,
                                            const detail::SinkhornShape& shape) {
  (void)matching(problem, st, "barycentric_map");
  return concat_shards<double>(st.rows, shape.batch, shape.n, shape.d, [&](std::size_t r) {
    return cuda_backend::barycentric_map_sharded(st.local[r], st.shards[r],
                                                 shard_shape(shape, st, r));
  });
}

std::vector<double> gradient_x_devices(const SinkhornProblem& problem, const DevicesState& st,
                                       const detail::SinkhornShape& shape) {
  (void)matching(problem, st, "gradient_x");
  return concat_shards<double>(st.rows, shape.batch, shape.n, shape.d, [&](std::size_t r) {
    return cuda_backend::gradient_x_sharded(st.local[r], st.shards[r], shard_shape(shape, st, r));
  });
}

std::vector<std::int64_t> sample_partners_devices(const SinkhornProblem& problem,
                                                  const DevicesState& st,
                                                  const detail::SinkhornShape& shape,
                                                  std::uint64_t seed) {
  (void)matching(problem, st, "sample_partners");
  // Partners are drawn from the Philox stream of the GLOBAL row (row_offset + i): the
  // single-GPU solve's pairs.
  return concat_shards<std::int64_t>(st.rows, shape.batch, shape.n, 1, [&](std::size_t r) {
    return cuda_backend::sample_partners_sharded(st.local[r], st.shards[r],
                                                 shard_shape(shape, st, r), seed, st.rows[r].begin);
  });
}

}  // namespace otgpu::dist
