// otgpu::sinkhorn with SinkhornOptions::devices: the sharded CUDA solve of one
// problem over several devices (or logical shards) of this process, and the derived
// outputs of its result from each shard's kept state. Internal to host/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "otgpu/dist.h"
#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::dist {

/// Validates options.devices (typed errors naming devices[k] and its value, the
/// backend, n against the shard count) and solves: one entry = the plain solve on
/// that device; two or more = one thread per entry running dist::sinkhorn on its rows.
SinkhornResult sinkhorn_devices(const SinkhornProblem& problem, const SinkhornOptions& options,
                                const detail::SinkhornShape& shape);

/// What a devices solve of G >= 2 shards keeps (SinkhornResult::state): shard r's
/// result as dist::sinkhorn returned it on its thread (f of rows [rows[r].begin,
/// rows[r].end), its own device state: staged rows, replicated y and b, F, G, eps), and
/// the views it was solved on. The shard views point into the caller's tensors and, for
/// an absent a, into a_uniform (1/n of the whole problem), which lives here so that
/// the kept shard states still match them.
struct DevicesState {
  SinkhornProblem key;                 ///< the whole problem as given to sinkhorn()
  std::vector<int> devices;            ///< options.devices
  std::vector<RowRange> rows;          ///< shard r's rows of every problem of the batch
  std::vector<SinkhornProblem> local;  ///< shard r's view of the problem
  std::vector<SinkhornResult> shards;  ///< shard r's result (state inside)
  std::vector<double> a_uniform;       ///< [n] 1/n when key.a is absent, else empty
};

/// The state wrapped for SinkhornResult::state. The owner's deleter is of a type of
/// its own, so devices_state() recognises it (std::get_deleter) without casting the
/// opaque pointer.
std::shared_ptr<const void> wrap_devices_state(std::unique_ptr<DevicesState> st);

/// The DevicesState of `result`, or nullptr when it holds none (no state, the
/// single-GPU SolveState, anything else).
const DevicesState* devices_state(const SinkhornResult& result) noexcept;

/// Runs part(r) for every shard r on a thread of its own (the part activates its
/// shard's device context), rethrows the first shard's error, and concatenates in row
/// order: part r is [batch, rows[r].size(), per], the whole [batch, n, per] (rows
/// partition [0, n)). Instantiated for double and std::int64_t.
template <class Out>
std::vector<Out> concat_shards(const std::vector<RowRange>& rows, std::int64_t batch,
                               std::int64_t n, std::int64_t per,
                               const std::function<std::vector<Out>(std::size_t)>& part);

/// The derived outputs of a devices result: each shard's rows on its own device
/// (thread context), one thread per shard, concatenated in row order ([B, n, d] /
/// [B, n]); sampled partners keyed by the global row, so they equal the single-GPU
/// solve's. InvalidArgument when the state does not belong to `problem` (other views).
std::vector<double> barycentric_map_devices(const SinkhornProblem& problem, const DevicesState& st,
                                            const detail::SinkhornShape& shape);
std::vector<double> gradient_x_devices(const SinkhornProblem& problem, const DevicesState& st,
                                       const detail::SinkhornShape& shape);
std::vector<std::int64_t> sample_partners_devices(const SinkhornProblem& problem,
                                                  const DevicesState& st,
                                                  const detail::SinkhornShape& shape,
                                                  std::uint64_t seed);

}  // namespace otgpu::dist
