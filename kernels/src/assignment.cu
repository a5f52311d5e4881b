// Batched exact assignment on the GPU (otgpu_kernels/assignment.h).
//
// Forward auction (Bertsekas) with eps-scaling on the padded square problem. The
// whole solve (every phase and round) runs in one launch, so no round trip to the
// host: one thread block per problem, synchronized with __syncthreads (auction_kernel),
// or, for few large problems, several blocks per problem meeting at a barrier in
// global memory (auction_grid_kernel, a cooperative launch; see "Grid path" below).
// Both run the same rounds, phases and certificate. Rows bid, in Jacobi rounds:
//   bidding   one warp per unassigned row i finds its best value v1 = max_j (-C_ij - p_j)
//             (at j1, ties to the first column at or after i, cyclically) and the second
//             best v2, and bids p_j1 + (v1 - v2) + eps for j1
//             (atomicMax on an order-preserving 64-bit encoding of the fp64 bid);
//   resolving the highest bidder of each column wins it (atomicCAS among equal bids),
//             the column's price becomes the bid and its previous owner is freed.
// A phase ends when every row is assigned; the assignment is then eps-optimal (within
// N eps of the optimum). Prices are kept and eps shrinks by 8 until the certificate
// proves the assignment optimal to round-off (below); a forbidden second choice is bid
// over as if it were (cost range + eps) worse than the best.
//
// Certificate: u_i = min_j (C_ij + p_j) over allowed pairs and v_j = -p_j satisfy
// u_i + v_j <= C_ij by construction; gap = cost - (sum u + sum v) bounds the distance
// to the optimum. The padding's potentials are folded into the larger side (a shift of
// u and v by a constant that keeps the dual objective or raises it), so the potentials
// of the original rectangular problem certify it directly. Prices and sums are fp64;
// the costs are read as staged (fp32, or fp64 for an fp64 cost matrix).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "grid.cuh"
#include "otgpu_kernels/assignment.h"
#include "otgpu_kernels/auction_rules.h"
#include "otgpu_kernels/cuda_check.h"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kAuctionThreads = 512;
constexpr int kWarps = kAuctionThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr unsigned long long kSign = 0x8000000000000000ull;

__device__ __forceinline__ double d_inf() { return __longlong_as_double(0x7ff0000000000000ll); }

/// Order-preserving map of doubles to unsigned integers (0 is below every number).
__device__ __forceinline__ unsigned long long encode(double x) {
  const auto b = static_cast<unsigned long long>(__double_as_longlong(x));
  return (b & kSign) ? ~b : (b | kSign);
}
__device__ __forceinline__ double decode(unsigned long long e) {
  const unsigned long long b = (e & kSign) ? (e & ~kSign) : ~e;
  return __longlong_as_double(static_cast<long long>(b));
}

/// Block-wide reductions (every thread gets the result). `sh` holds kWarps values;
/// the leading barrier lets consecutive calls reuse it.
__device__ double block_sum(double x, double* sh) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(kFull, x, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
  __syncthreads();
  double t = 0;
  for (int k = 0; k < kWarps; ++k) t += sh[k];
  return t;
}
__device__ double block_min(double x, double* sh) {
  for (int o = 16; o > 0; o >>= 1) x = fmin(x, __shfl_down_sync(kFull, x, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
  __syncthreads();
  double t = sh[0];
  for (int k = 1; k < kWarps; ++k) t = fmin(t, sh[k]);
  return t;
}
__device__ double block_max(double x, double* sh) { return -block_min(-x, sh); }

__device__ __forceinline__ double warp_min(double x) {
  for (int o = 16; o > 0; o >>= 1) x = fmin(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

// ---- The setup both auction kernels share (each thread passes its place in the
// problem: thread t of `threads`, warp w of `warps`). The costs are read with plain
// loads: C is never written during the launch, so no cache can hold a stale copy.

/// The least and largest finite cost of the original [n, m] corner over this thread's
/// entries (lo = +inf, hi = -inf when it has none); the caller reduces them.
template <class T>
__device__ void corner_extent(const T* __restrict__ C, int n, int m, int N, int t, int threads,
                              double& lo, double& hi) {
  const double inf = d_inf();
  for (std::int64_t e = t; e < static_cast<std::int64_t>(n) * m; e += threads) {
    const double c = static_cast<double>(C[(e / m) * N + e % m]);
    if (c < inf) {
      lo = fmin(lo, c);
      hi = fmax(hi, c);
    }
  }
}

/// Sets *flag when a line of the side that must be matched entirely has no allowed pair:
/// a row when n <= m (one warp per row: every lane of the warp reaches __any_sync), a
/// column when m <= n (one thread per column). The padding never needs the check: its
/// zero-cost rows or columns are allowed everywhere.
template <class T>
__device__ void flag_empty_lines(const T* __restrict__ C, int n, int m, int N, int t, int threads,
                                 int w, int warps, int lane, int* flag) {
  const double inf = d_inf();
  if (n <= m) {
    for (int i = w; i < n; i += warps) {
      bool any = false;
      for (int j = lane; j < m; j += 32)
        any = any || static_cast<double>(C[static_cast<std::int64_t>(i) * N + j]) < inf;
      if (!__any_sync(kFull, any) && lane == 0) atomicOr(flag, 1);
    }
  }
  if (m <= n) {
    for (int j = t; j < m; j += threads) {
      bool any = false;
      for (int i = 0; i < n && !any; ++i)
        any = static_cast<double>(C[static_cast<std::int64_t>(i) * N + j]) < inf;
      if (!any) atomicOr(flag, 1);
    }
  }
}

/// The state before the first phase: every price 0, no row or column assigned. The
/// assignment is cleared here too (not only when a phase starts) because a problem
/// found infeasible before its first round writes its outputs from it: without this it
/// would report the assignment a previous call left in the workspace.
__device__ void init_state(double* price, int* row_col, int* col_row, int N, int t, int threads) {
  for (int j = t; j < N; j += threads) {
    price[j] = 0.0;
    row_col[j] = -1;
    col_row[j] = -1;
  }
}

template <class T>
__global__ void __launch_bounds__(kAuctionThreads)
    auction_kernel(const T* __restrict__ Call, int n, int m, int N, AuctionScratch s,
                   AuctionOutputs o, bool smem_prices) {
  extern __shared__ double smem[];
  __shared__ double red[kWarps];
  __shared__ int s_count;
  __shared__ int s_flag;

  const int b = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const T* C = Call + static_cast<std::int64_t>(b) * N * N;
  const std::size_t off = static_cast<std::size_t>(b) * static_cast<std::size_t>(N);
  double* price = smem_prices ? smem : s.price + off;
  double* ru = s.row_u + off;
  int* row_col = s.row_col + off;
  int* col_row = s.col_row + off;
  int* bid_row = s.bid_row + off;
  int* my_col = s.my_col + off;
  unsigned long long* bid_val = s.bid_val + off;
  unsigned long long* my_bid = s.my_bid + off;
  const double inf = d_inf();

  // ---- scale and the plain infeasibility checks (a row / column with no allowed pair)
  if (tid == 0) s_flag = 0;
  double lo = inf, hi = -inf;
  corner_extent(C, n, m, N, tid, kAuctionThreads, lo, hi);
  lo = block_min(lo, red);  // its barriers also order s_flag = 0 before the atomicOr below
  hi = block_max(hi, red);
  flag_empty_lines(C, n, m, N, tid, kAuctionThreads, warp, kWarps, lane, &s_flag);
  init_state(price, row_col, col_row, N, tid, kAuctionThreads);
  __syncthreads();
  int status = s_flag ? 1 : 0;
  const auction::Schedule sched = auction::schedule(lo, hi, N);
  const double range = sched.range, eps_floor = sched.eps_floor;
  double eps = sched.eps;
  long long rounds = 0;
  const long long cap = sched.cap;

  while (status == 0) {
    for (int j = tid; j < N; j += kAuctionThreads) {
      row_col[j] = -1;
      col_row[j] = -1;
      bid_row[j] = -1;
      bid_val[j] = 0;
    }
    __syncthreads();
    long long pr = 0;
    for (;;) {
      if (tid == 0) s_count = 0;
      __syncthreads();
      // Bidding: one warp per unassigned row.
      for (int i = warp; i < N; i += kWarps) {
        if (row_col[i] >= 0) continue;
        const T* ci = C + static_cast<std::int64_t>(i) * N;
        // Ties go to the first column at or after i (cyclically): rows with equal
        // costs (the zero-cost padding, tied data) spread over the columns in one
        // round instead of queueing for the same column one winner per round.
        auto rot = [i, N](int j) { return auction::tie_rank(j, i, N); };
        double v1 = -inf, v2 = -inf;
        int j1 = -1;
        for (int j = lane; j < N; j += 32) {
          const double c = static_cast<double>(ci[j]);
          if (!(c < inf)) continue;
          const double val = -c - price[j];
          if (val > v1 || (val == v1 && rot(j) < rot(j1))) {
            v2 = v1;
            v1 = val;
            j1 = j;
          } else if (val > v2) {
            v2 = val;
          }
        }
        for (int sh = 16; sh > 0; sh >>= 1) {
          const double ov1 = __shfl_xor_sync(kFull, v1, sh);
          const double ov2 = __shfl_xor_sync(kFull, v2, sh);
          const int oj = __shfl_xor_sync(kFull, j1, sh);
          if (ov1 > v1 || (ov1 == v1 && oj >= 0 && (j1 < 0 || rot(oj) < rot(j1)))) {
            v2 = fmax(v1, ov2);
            v1 = ov1;
            j1 = oj;
          } else {
            v2 = fmax(v2, ov1);
          }
        }
        if (lane == 0) {
          atomicAdd(&s_count, 1);
          if (j1 < 0) {
            atomicOr(&s_flag, 1);
          } else {
            // Plain load: this block alone writes the prices, ordered by __syncthreads.
            const unsigned long long e = encode(auction::bid(price[j1], v1, v2, range, eps));
            my_bid[i] = e;
            my_col[i] = j1;
            atomicMax(&bid_val[j1], e);
          }
        }
      }
      __syncthreads();
      if (s_count == 0) break;
      if (s_flag) {
        status = 1;
        break;
      }
      if (++pr > cap) {
        status = 2;
        break;
      }
      // Resolving: the highest bid wins (the first of equal bids to claim the column).
      for (int i = tid; i < N; i += kAuctionThreads) {
        if (row_col[i] < 0) {
          const int j = my_col[i];
          if (bid_val[j] == my_bid[i]) atomicCAS(&bid_row[j], -1, i);
        }
      }
      __syncthreads();
      for (int j = tid; j < N; j += kAuctionThreads) {
        const int r = bid_row[j];
        if (r >= 0) {
          const int old = col_row[j];
          if (old >= 0) row_col[old] = -1;
          col_row[j] = r;
          row_col[r] = j;
          price[j] = decode(bid_val[j]);
          bid_row[j] = -1;
        }
        bid_val[j] = 0;
      }
      __syncthreads();
    }
    rounds += pr;
    if (status != 0) break;
    // Certificate of the phase on the padded problem.
    double cost = 0, acost = 0, dual = 0;
    for (int i = warp; i < N; i += kWarps) {
      const T* ci = C + static_cast<std::int64_t>(i) * N;
      double mn = inf;
      for (int j = lane; j < N; j += 32) {
        const double c = static_cast<double>(ci[j]);
        if (c < inf) mn = fmin(mn, c + price[j]);
      }
      mn = warp_min(mn);
      if (lane == 0) {
        ru[i] = mn;
        const double cc = static_cast<double>(ci[row_col[i]]);
        cost += cc;
        acost += fabs(cc);
        dual += mn;
      }
    }
    for (int j = tid; j < N; j += kAuctionThreads) dual -= price[j];
    cost = block_sum(cost, red);
    acost = block_sum(acost, red);
    dual = block_sum(dual, red);
    if (auction::phases_done(cost, acost, dual, range, N, eps, eps_floor)) break;
    eps = auction::next_eps(eps, eps_floor);
  }

  // ---- outputs on the original [n, m] problem
  __syncthreads();
  if (status != 0) {
    for (int i = tid; i < n; i += kAuctionThreads) {
      const int rc = row_col[i];
      o.row_to_col[static_cast<std::size_t>(b) * n + i] = rc >= 0 && rc < m ? rc : -1;
      if (o.u) o.u[static_cast<std::size_t>(b) * n + i] = 0;
    }
    for (int j = tid; j < m; j += kAuctionThreads) {
      const int cr = col_row[j];
      if (o.col_to_row)
        o.col_to_row[static_cast<std::size_t>(b) * m + j] = cr >= 0 && cr < n ? cr : -1;
      if (o.v) o.v[static_cast<std::size_t>(b) * m + j] = 0;
    }
    if (tid == 0) {
      if (o.cost) o.cost[b] = inf;
      if (o.dual) o.dual[b] = -inf;
      if (o.gap) o.gap[b] = inf;
      if (o.max_violation) o.max_violation[b] = inf;
      if (o.rounds) o.rounds[b] = rounds;
      if (o.status) o.status[b] = status;
    }
    if (smem_prices) {
      for (int j = tid; j < N; j += kAuctionThreads) s.price[off + j] = price[j];
    }
    return;
  }
  // Fold the padding: dummy rows (n < m) all have u = min_j p_j = t; dummy columns
  // (n > m) have v = -p_j, at most s.
  double shift_u = 0, shift_v = 0;
  if (n < m) {
    double t = inf;
    for (int i = n + tid; i < N; i += kAuctionThreads) t = fmin(t, ru[i]);
    t = block_min(t, red);
    shift_u = -t;
    shift_v = t;
  } else if (n > m) {
    double sv = -inf;
    for (int j = m + tid; j < N; j += kAuctionThreads) sv = fmax(sv, -price[j]);
    sv = block_max(sv, red);
    shift_u = sv;
    shift_v = -sv;
  }
  double cost = 0, dual = 0, viol = 0;
  for (int i = warp; i < n; i += kWarps) {
    const T* ci = C + static_cast<std::int64_t>(i) * N;
    const double ui = ru[i] + shift_u;
    double w = 0;
    for (int j = lane; j < m; j += 32) {
      const double c = static_cast<double>(ci[j]);
      if (c < inf) w = fmax(w, ui - price[j] + shift_v - c);
    }
    w = -warp_min(-w);
    if (lane == 0) {
      const int rc = row_col[i];
      const bool real = rc < m;
      o.row_to_col[static_cast<std::size_t>(b) * n + i] = real ? rc : -1;
      if (o.u) o.u[static_cast<std::size_t>(b) * n + i] = ui;
      if (real) cost += static_cast<double>(ci[rc]);
      dual += ui;
      viol = fmax(viol, w);
      if (n > m) viol = fmax(viol, ui);
    }
  }
  for (int j = tid; j < m; j += kAuctionThreads) {
    const double vj = -price[j] + shift_v;
    const int cr = col_row[j];
    if (o.col_to_row) o.col_to_row[static_cast<std::size_t>(b) * m + j] = cr < n ? cr : -1;
    if (o.v) o.v[static_cast<std::size_t>(b) * m + j] = vj;
    dual += vj;
    if (n < m) viol = fmax(viol, vj);
  }
  cost = block_sum(cost, red);
  dual = block_sum(dual, red);
  viol = block_max(viol, red);
  if (tid == 0) {
    if (o.cost) o.cost[b] = cost;
    if (o.dual) o.dual[b] = dual;
    if (o.gap) o.gap[b] = cost - dual;
    if (o.max_violation) o.max_violation[b] = viol;
    if (o.rounds) o.rounds[b] = rounds;
    if (o.status) o.status[b] = 0;
  }
  if (smem_prices) {
    for (int j = tid; j < N; j += kAuctionThreads) s.price[off + j] = price[j];
  }
}

// ---------------------------------------------------------------------------------
// Grid path: the same auction with the rows of one problem spread over B blocks.
//
// All K * B blocks are resident (cooperative launch), so the B blocks of a problem can
// meet at a barrier in global memory (problem_sync) without deadlock; problems never
// wait for each other. Prices, assignments and bids live in global memory (L2-resident
// at N = 4096: 32 KB of prices). A round needs two barriers instead of the block's
// three: the winner of a column applies its own win (the column's previous owner was
// assigned when the round began, so it neither bid nor won, and only this winner
// writes its row). The unassigned rows are a compacted list (all rows at the start of
// a phase; then the losers and the evicted rows of each round, appended by an atomic
// counter), so the length of the list is known before a round bids: the phase ends when
// it is 0, and when it is small (the long tail of a phase) a group of warps, up to a
// block, bids for each row, the row's columns over the group's threads. The column bids (bid_val,
// bid_row), the list and its counter alternate between two buffers by round parity:
// those of the other parity were last read in the previous round, before its closing
// barrier, and are cleared during this round's bidding, a barrier before their reuse.
//   bidding   (reads list[par], price; writes my_bid, my_col, atomicMax bid_val[par];
//             clears bid_*[par ^ 1] and the counter of list[par ^ 1])
//   barrier   (the infeasibility flag is final)
//   resolving (reads list[par], my_bid, bid_val[par]; atomicCAS bid_row[par]; the winner
//             writes col_row[j], price[j], row_col of itself and of the evicted row;
//             losers and evicted rows are appended to list[par ^ 1])
//   barrier   (the counter of list[par ^ 1] is final: every block reads the same value)
// Data that other blocks write (prices, assignments, bids, the row potentials) is read
// with __ldcg (cached in L2 only, the point of coherence of the device) so that no
// stale L1 line survives a barrier; the barrier's fences order the writes before it.
// Reductions (cost range, certificate sums, shifts) go through fp64 / encoded atomics
// in the control words and are read after a barrier; the phase sums alternate by phase
// parity for the same reason as the bids. Every decision (phase end, status, eps, the
// stopping test) is made from values every block of the problem reads after the same
// barrier, so the B blocks take the same branches and meet the same barriers.

/// Control words of one problem (kAuctionGridCtrlBytes, zeroed before the launch).
struct GridCtrl {
  unsigned long long barrier;    ///< arrivals at the problem's barrier (monotone)
  unsigned long long lo_rev;     ///< ~encode(least finite cost), by atomicMax
  unsigned long long hi;         ///< encode(largest finite cost)
  unsigned long long shift_rev;  ///< ~encode(least u of a dummy row) (n < m)
  unsigned long long shift_hi;   ///< encode(largest -p_j of a dummy column) (n > m)
  unsigned long long viol;       ///< encode(largest violation of the outputs)
  int unassigned[2];             ///< length of the unassigned-row list, by round parity
  int flag;                      ///< a row or column without an allowed pair
  int pad;
  double phase_sum[2][3];  ///< certificate of a phase: cost, sum |cost|, dual; by phase parity
  double out_sum[2];       ///< cost and dual of the outputs
};
static_assert(sizeof(GridCtrl) <= static_cast<std::size_t>(kAuctionGridCtrlBytes));

template <class X>
__device__ __forceinline__ X ld_volatile(const X* p) {
  return *const_cast<const volatile X*>(p);
}

/// Barrier of the B blocks of one problem. `gen` counts the barriers this block met;
/// all blocks meet the same ones, so the counter reaches gen * B once all arrived.
/// Thread 0 fences before arriving (its block's writes, ordered by the __syncthreads,
/// become visible) and after leaving (so the block's later reads see the others').
__device__ __forceinline__ void problem_sync(unsigned long long* counter, unsigned long long& gen,
                                             unsigned long long B) {
  __syncthreads();
  ++gen;
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1ull);
    const unsigned long long target = gen * B;
    while (ld_volatile(counter) < target) {
    }
    __threadfence();
  }
  __syncthreads();
}

/// A bidder's best value v1 = max_j (-C_ij - p_j) at j1 (least rot among equals) and the
/// largest value v2 of the other columns.
struct Best {
  double v1 = -std::numeric_limits<double>::infinity();
  double v2 = -std::numeric_limits<double>::infinity();
  int j1 = -1;
};

/// Columns at or after row i come first among equal values (cyclically): rows with equal
/// costs (the zero-cost padding, tied data) spread over the columns in one round.
__device__ __forceinline__ int rot(int j, int i, int N) { return auction::tie_rank(j, i, N); }

/// Folds (ov1, ov2, oj) into b. The result does not depend on the order of the folds.
__device__ __forceinline__ void fold(Best& b, double ov1, double ov2, int oj, int i, int N) {
  if (ov1 > b.v1 || (ov1 == b.v1 && oj >= 0 && (b.j1 < 0 || rot(oj, i, N) < rot(b.j1, i, N)))) {
    b.v2 = fmax(b.v1, ov2);
    b.v1 = ov1;
    b.j1 = oj;
  } else {
    b.v2 = fmax(b.v2, ov1);
  }
}

/// The columns j0, j0 + stride, ... of row ci (prices read through L2); the loads of
/// four columns are issued before any is compared.
template <class T>
__device__ __forceinline__ void scan_row(const T* __restrict__ ci, const double* price, int i,
                                         int N, int j0, int stride, Best& b) {
  const double inf = d_inf();
  auto see = [&](double c, double p, int j) {
    if (c < inf) fold(b, -c - p, -inf, j, i, N);
  };
  int j = j0;
  for (; j + 3 * stride < N; j += 4 * stride) {
    T c[4];
    double p[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      c[u] = ci[j + u * stride];
      p[u] = __ldcg(&price[j + u * stride]);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) see(static_cast<double>(c[u]), p[u], j + u * stride);
  }
  for (; j < N; j += stride) see(static_cast<double>(ci[j]), __ldcg(&price[j]), j);
}

/// The best of the warp's lanes, in every lane.
__device__ __forceinline__ Best warp_best(Best b, int i, int N) {
  for (int sh = 16; sh > 0; sh >>= 1) {
    const double ov1 = __shfl_xor_sync(kFull, b.v1, sh);
    const double ov2 = __shfl_xor_sync(kFull, b.v2, sh);
    const int oj = __shfl_xor_sync(kFull, b.j1, sh);
    fold(b, ov1, ov2, oj, i, N);
  }
  return b;
}

template <class T>
__global__ void __launch_bounds__(kAuctionThreads, 1)
    auction_grid_kernel(const T* __restrict__ Call, int n, int m, int N, int B, AuctionScratch s,
                        AuctionOutputs o) {
  __shared__ double red[kWarps];
  __shared__ double tail_v1[kWarps], tail_v2[kWarps];
  __shared__ int tail_j1[kWarps];

  const int b = static_cast<int>(blockIdx.x) / B;
  const int lb = static_cast<int>(blockIdx.x) % B;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int gt = lb * kAuctionThreads + tid;  // thread within the problem
  const int gthreads = B * kAuctionThreads;
  const int gw = lb * kWarps + warp;  // warp within the problem
  const int gwarps = B * kWarps;
  const bool leader = lb == 0 && tid == 0;
  const T* C = Call + static_cast<std::int64_t>(b) * N * N;
  const std::size_t off = static_cast<std::size_t>(b) * static_cast<std::size_t>(N);
  double* price = s.price + off;
  double* ru = s.row_u + off;
  int* row_col = s.row_col + off;
  int* col_row = s.col_row + off;
  int* my_col = s.my_col + off;
  unsigned long long* my_bid = s.my_bid + off;
  GridCtrl* g = reinterpret_cast<GridCtrl*>(s.grid_ctrl +
                                            static_cast<std::size_t>(b) * kAuctionGridCtrlBytes);
  unsigned long long gen = 0;
  const auto nb = static_cast<unsigned long long>(B);
  const double inf = d_inf();

  // ---- scale and the plain infeasibility checks
  double lo = inf, hi = -inf;
  corner_extent(C, n, m, N, gt, gthreads, lo, hi);
  lo = block_min(lo, red);
  hi = block_max(hi, red);
  if (tid == 0) {
    atomicMax(&g->lo_rev, ~encode(lo));
    atomicMax(&g->hi, encode(hi));
  }
  flag_empty_lines(C, n, m, N, gt, gthreads, gw, gwarps, lane, &g->flag);
  init_state(price, row_col, col_row, N, gt, gthreads);
  problem_sync(&g->barrier, gen, nb);
  // Read after the barrier, where every block of the problem sees the same words: the
  // blocks take the same branches (status) and the same schedule.
  int status = ld_volatile(&g->flag) ? 1 : 0;
  lo = decode(~ld_volatile(&g->lo_rev));
  hi = decode(ld_volatile(&g->hi));
  const auction::Schedule sched = auction::schedule(lo, hi, N);
  const double range = sched.range, eps_floor = sched.eps_floor;
  double eps = sched.eps;
  long long rounds = 0;
  const long long cap = sched.cap;
  unsigned round = 0, phase = 0;  // parities of the double buffers
  // A row's bid for its best column j1: p_j1 + (v1 - v2) + eps.
  auto place_bid = [&](int i, const Best& best, unsigned long long* bid_val) {
    if (best.j1 < 0) {
      atomicOr(&g->flag, 1);
      return;
    }
    // __ldcg: the price may have been written by another block of the problem in an
    // earlier round; a plain load could hit a stale line of this SM's L1 (not coherent
    // across SMs), the barrier's fences only make the write visible in L2.
    const unsigned long long e =
        encode(auction::bid(__ldcg(&price[best.j1]), best.v1, best.v2, range, eps));
    my_bid[i] = e;
    my_col[i] = best.j1;
    atomicMax(&bid_val[best.j1], e);
  };

  while (status == 0) {
    {
      const unsigned par = round & 1u;
      int* rows = (par ? s.unassigned2 : s.unassigned) + off;
      for (int j = gt; j < N; j += gthreads) {
        row_col[j] = -1;
        col_row[j] = -1;
        s.bid_row[off + j] = -1;
        s.bid_row2[off + j] = -1;
        s.bid_val[off + j] = 0;
        s.bid_val2[off + j] = 0;
        rows[j] = j;
      }
      if (leader) g->unassigned[par] = N;
    }
    problem_sync(&g->barrier, gen, nb);
    long long pr = 0;
    for (;;) {
      const unsigned par = round & 1u;
      const int count = ld_volatile(&g->unassigned[par]);
      if (count == 0) break;  // every row assigned: the phase is over
      ++round;
      int* bid_row = (par ? s.bid_row2 : s.bid_row) + off;
      unsigned long long* bid_val = (par ? s.bid_val2 : s.bid_val) + off;
      const int* rows = (par ? s.unassigned2 : s.unassigned) + off;
      int* next_rows = (par ? s.unassigned : s.unassigned2) + off;
      {
        int* other_row = (par ? s.bid_row : s.bid_row2) + off;
        unsigned long long* other_val = (par ? s.bid_val : s.bid_val2) + off;
        for (int j = gt; j < N; j += gthreads) {
          other_row[j] = -1;
          other_val[j] = 0;
        }
        if (leader) g->unassigned[par ^ 1u] = 0;
      }
      // Bidding: G warps per unassigned row, G the largest power of two up to a block
      // (16 warps) with G * count within the problem's warps. Many rows: one warp per
      // row. Few (the long tail of a phase): a group of warps per row, the row's
      // columns over the group's threads, so that a bid costs N / (128 G) rounds of
      // loads, not N / 128.
      const int G = auction::group_warps(count, gwarps, kWarps);
      if (G == 1) {
        for (int k = gw; k < count; k += gwarps) {
          const int i = __ldcg(&rows[k]);
          Best best;
          scan_row(C + static_cast<std::int64_t>(i) * N, price, i, N, lane, 32, best);
          best = warp_best(best, i, N);
          if (lane == 0) place_bid(i, best, bid_val);
        }
      } else {
        const int per_block = kWarps / G;          // rows a block bids for at once
        const int grp = warp / G, sub = warp % G;  // the warp's group, its place in it
        for (int base = lb * per_block; base < count; base += B * per_block) {
          const int k = base + grp;
          const bool active = k < count;  // the same for the G warps of a group
          const int i = active ? __ldcg(&rows[k]) : 0;
          if (active) {
            Best best;
            scan_row(C + static_cast<std::int64_t>(i) * N, price, i, N, sub * 32 + lane, G * 32,
                     best);
            best = warp_best(best, i, N);
            if (lane == 0) {
              tail_v1[warp] = best.v1;
              tail_v2[warp] = best.v2;
              tail_j1[warp] = best.j1;
            }
          }
          __syncthreads();
          if (active && sub == 0) {
            Best part;
            if (lane < G) {
              part.v1 = tail_v1[warp + lane];
              part.v2 = tail_v2[warp + lane];
              part.j1 = tail_j1[warp + lane];
            }
            part = warp_best(part, i, N);
            if (lane == 0) place_bid(i, part, bid_val);
          }
          __syncthreads();
        }
      }
      problem_sync(&g->barrier, gen, nb);
      if (ld_volatile(&g->flag)) {
        status = 1;
        break;
      }
      if (++pr > cap) {
        status = 2;
        break;
      }
      // Resolving: the highest bid wins (the first of equal bids to claim the column)
      // and the winner moves in; the losers and the evicted rows are the next round's
      // unassigned rows.
      for (int k = gt; k < count; k += gthreads) {
        const int i = __ldcg(&rows[k]);
        const int j = __ldcg(&my_col[i]);
        const unsigned long long e = __ldcg(&my_bid[i]);
        if (__ldcg(&bid_val[j]) == e && atomicCAS(&bid_row[j], -1, i) == -1) {
          const int old = __ldcg(&col_row[j]);
          if (old >= 0) {
            row_col[old] = -1;
            next_rows[atomicAdd(&g->unassigned[par ^ 1u], 1)] = old;
          }
          col_row[j] = i;
          row_col[i] = j;
          price[j] = decode(e);
        } else {
          next_rows[atomicAdd(&g->unassigned[par ^ 1u], 1)] = i;
        }
      }
      problem_sync(&g->barrier, gen, nb);
    }
    rounds += pr;
    if (status != 0) break;
    // Certificate of the phase on the padded problem.
    double* sum = g->phase_sum[phase & 1u];
    if (leader) {
      double* next = g->phase_sum[(phase & 1u) ^ 1u];
      next[0] = next[1] = next[2] = 0;
    }
    ++phase;
    double cost = 0, acost = 0, dual = 0;
    for (int i = gw; i < N; i += gwarps) {
      const T* ci = C + static_cast<std::int64_t>(i) * N;
      double mn = inf;
      for (int j = lane; j < N; j += 32) {
        const double c = static_cast<double>(ci[j]);
        if (c < inf) mn = fmin(mn, c + __ldcg(&price[j]));
      }
      mn = warp_min(mn);
      if (lane == 0) {
        ru[i] = mn;
        const double cc = static_cast<double>(ci[__ldcg(&row_col[i])]);
        cost += cc;
        acost += fabs(cc);
        dual += mn;
      }
    }
    for (int j = gt; j < N; j += gthreads) dual -= __ldcg(&price[j]);
    cost = block_sum(cost, red);
    acost = block_sum(acost, red);
    dual = block_sum(dual, red);
    if (tid == 0) {
      atomicAdd(&sum[0], cost);
      atomicAdd(&sum[1], acost);
      atomicAdd(&sum[2], dual);
    }
    problem_sync(&g->barrier, gen, nb);
    if (auction::phases_done(ld_volatile(&sum[0]), ld_volatile(&sum[1]), ld_volatile(&sum[2]),
                             range, N, eps, eps_floor))
      break;
    eps = auction::next_eps(eps, eps_floor);
  }

  // ---- outputs on the original [n, m] problem (no writer of the scratch is left)
  if (status != 0) {
    for (int i = gt; i < n; i += gthreads) {
      const int rc = __ldcg(&row_col[i]);
      o.row_to_col[static_cast<std::size_t>(b) * n + i] = rc >= 0 && rc < m ? rc : -1;
      if (o.u) o.u[static_cast<std::size_t>(b) * n + i] = 0;
    }
    for (int j = gt; j < m; j += gthreads) {
      const int cr = __ldcg(&col_row[j]);
      if (o.col_to_row)
        o.col_to_row[static_cast<std::size_t>(b) * m + j] = cr >= 0 && cr < n ? cr : -1;
      if (o.v) o.v[static_cast<std::size_t>(b) * m + j] = 0;
    }
    if (leader) {
      if (o.cost) o.cost[b] = inf;
      if (o.dual) o.dual[b] = -inf;
      if (o.gap) o.gap[b] = inf;
      if (o.max_violation) o.max_violation[b] = inf;
      if (o.rounds) o.rounds[b] = rounds;
      if (o.status) o.status[b] = status;
    }
    return;
  }
  // Fold the padding (as in the block kernel).
  if (n < m) {
    double t = inf;
    for (int i = n + gt; i < N; i += gthreads) t = fmin(t, __ldcg(&ru[i]));
    t = block_min(t, red);
    if (tid == 0) atomicMax(&g->shift_rev, ~encode(t));
  } else if (n > m) {
    double sv = -inf;
    for (int j = m + gt; j < N; j += gthreads) sv = fmax(sv, -__ldcg(&price[j]));
    sv = block_max(sv, red);
    if (tid == 0) atomicMax(&g->shift_hi, encode(sv));
  }
  problem_sync(&g->barrier, gen, nb);
  double shift_u = 0, shift_v = 0;
  if (n < m) {
    const double t = decode(~ld_volatile(&g->shift_rev));
    shift_u = -t;
    shift_v = t;
  } else if (n > m) {
    const double sv = decode(ld_volatile(&g->shift_hi));
    shift_u = sv;
    shift_v = -sv;
  }
  double cost = 0, dual = 0, viol = 0;
  for (int i = gw; i < n; i += gwarps) {
    const T* ci = C + static_cast<std::int64_t>(i) * N;
    const double ui = __ldcg(&ru[i]) + shift_u;
    double w = 0;
    for (int j = lane; j < m; j += 32) {
      const double c = static_cast<double>(ci[j]);
      if (c < inf) w = fmax(w, ui - __ldcg(&price[j]) + shift_v - c);
    }
    w = -warp_min(-w);
    if (lane == 0) {
      const int rc = __ldcg(&row_col[i]);
      const bool real = rc < m;
      o.row_to_col[static_cast<std::size_t>(b) * n + i] = real ? rc : -1;
      if (o.u) o.u[static_cast<std::size_t>(b) * n + i] = ui;
      if (real) cost += static_cast<double>(ci[rc]);
      dual += ui;
      viol = fmax(viol, w);
      if (n > m) viol = fmax(viol, ui);
    }
  }
  for (int j = gt; j < m; j += gthreads) {
    const double vj = -__ldcg(&price[j]) + shift_v;
    const int cr = __ldcg(&col_row[j]);
    if (o.col_to_row) o.col_to_row[static_cast<std::size_t>(b) * m + j] = cr < n ? cr : -1;
    if (o.v) o.v[static_cast<std::size_t>(b) * m + j] = vj;
    dual += vj;
    if (n < m) viol = fmax(viol, vj);
  }
  cost = block_sum(cost, red);
  dual = block_sum(dual, red);
  viol = block_max(viol, red);
  if (tid == 0) {
    atomicAdd(&g->out_sum[0], cost);
    atomicAdd(&g->out_sum[1], dual);
    atomicMax(&g->viol, encode(viol));
  }
  problem_sync(&g->barrier, gen, nb);
  if (leader) {
    const double tc = ld_volatile(&g->out_sum[0]), td = ld_volatile(&g->out_sum[1]);
    if (o.cost) o.cost[b] = tc;
    if (o.dual) o.dual[b] = td;
    if (o.gap) o.gap[b] = tc - td;
    if (o.max_violation) o.max_violation[b] = decode(ld_volatile(&g->viol));
    if (o.rounds) o.rounds[b] = rounds;
    if (o.status) o.status[b] = 0;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    stage_matrix_kernel(Strided3 src, std::int64_t N, T* __restrict__ dst) {
  const std::int64_t n = src.dim[1], m = src.dim[2];
  const std::int64_t total = src.dim[0] * N * N;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = e % N, i = (e / N) % N, b = e / (N * N);
    T v = 0;
    if (i < n && j < m) {
      const std::int64_t at = b * src.stride[0] + i * src.stride[1] + j * src.stride[2];
      v = src.is_f64 ? static_cast<T>(static_cast<const double*>(src.data)[at])
                     : static_cast<T>(static_cast<const float*>(src.data)[at]);
    }
    dst[e] = v;
  }
}

__global__ void __launch_bounds__(kThreads)
    row_norms_kernel(const float* __restrict__ X, std::int64_t rows, std::int64_t d,
                     float* __restrict__ out) {
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / 32);
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (std::int64_t r = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
       r < rows; r += warps) {
    float acc = 0;
    for (std::int64_t k = lane; k < d; k += 32) acc = fmaf(X[r * d + k], X[r * d + k], acc);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(kFull, acc, o);
    if (lane == 0) out[r] = acc;
  }
}

__global__ void __launch_bounds__(kThreads)
    points_epilogue_kernel(const float* __restrict__ G, const float* __restrict__ xn,
                           const float* __restrict__ yn, std::int64_t K, std::int64_t n,
                           std::int64_t m, std::int64_t N, int kind, float* __restrict__ C) {
  const std::int64_t total = K * N * N;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = e % N, i = (e / N) % N, b = e / (N * N);
    float v = 0;
    if (i < n && j < m) {
      const float g = G[(b * n + i) * m + j];
      if (kind == static_cast<int>(CostKind::neg_dot)) {
        v = -g;
      } else {
        v = fmaxf(xn[b * n + i] + yn[b * m + j] - 2.0f * g, 0.0f);
        if (kind == static_cast<int>(CostKind::euclidean)) v = sqrtf(v);
      }
    }
    C[e] = v;
  }
}

/// Blocks per problem of the grid path (0: run the block path). All K * B blocks must
/// be resident at once (the barrier of a problem spins on its peers), so B is capped by
/// the occupancy the compiled kernel reaches (one 512-thread block per SM at its 86
/// registers), shared evenly among the problems; more than one block per SM and per
/// problem would only add arrivals at the barrier, and a block per 16 rows is the most
/// a first round can use.
template <class T>
int grid_blocks_per_problem(std::int64_t K, std::int64_t N, AuctionPath path) {
  if (path == AuctionPath::block) return 0;
  int dev = 0, sms = 0, coop = 0, per_sm = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&dev));
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  // The occupancy at the launch's own size: 512 threads, no dynamic shared memory.
  OTGPU_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, auction_grid_kernel<T>,
                                                                 kAuctionThreads, 0));
  return static_cast<int>(
      auction::grid_blocks(K, N, sms, per_sm, coop != 0, path == AuctionPath::automatic, kWarps));
}

template <class T>
void launch_auction(const T* C, std::int64_t K, std::int64_t n, std::int64_t m, std::int64_t N,
                    const AuctionScratch& scratch, const AuctionOutputs& out,
                    std::size_t smem_optin_bytes, AuctionPath path, cudaStream_t stream) {
  if (K <= 0) return;
  if (const int B = grid_blocks_per_problem<T>(K, N, path); B > 0) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(scratch.grid_ctrl, 0,
                                     static_cast<std::size_t>(K * kAuctionGridCtrlBytes), stream));
    const T* c = C;
    int ni = static_cast<int>(n), mi = static_cast<int>(m), Ni = static_cast<int>(N), Bi = B;
    AuctionScratch sc = scratch;
    AuctionOutputs oc = out;
    void* args[] = {&c, &ni, &mi, &Ni, &Bi, &sc, &oc};
    OTGPU_CUDA_CHECK(cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(&auction_grid_kernel<T>), dim3(static_cast<unsigned>(K * B)),
        dim3(kAuctionThreads), args, 0, stream));
    return;
  }
  const std::size_t price_bytes = static_cast<std::size_t>(N) * sizeof(double);
  // The prices go to shared memory when they fit beside the kernel's static shared
  // memory (its reductions) within the device's opt-in limit; else they stay global.
  cudaFuncAttributes attr{};
  OTGPU_CUDA_CHECK(cudaFuncGetAttributes(&attr, auction_kernel<T>));
  const std::size_t cap = smem_optin_bytes - std::min(smem_optin_bytes, attr.sharedSizeBytes);
  const bool smem = price_bytes <= cap;
  const std::size_t dyn = smem ? price_bytes : 0;
  if (dyn > 48 * 1024) {
    // The opt-in cap is one attribute per kernel, shared by every host thread: set it to
    // the most this kernel can ever take, never to this launch's size, or a concurrent
    // launch with fewer prices could lower it between our set and our launch (which
    // would then fail with an invalid argument).
    OTGPU_CUDA_CHECK(cudaFuncSetAttribute(
        auction_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cap)));
  }
  auction_kernel<T><<<static_cast<unsigned>(K), kAuctionThreads, dyn, stream>>>(
      C, static_cast<int>(n), static_cast<int>(m), static_cast<int>(N), scratch, out, smem);
  OTGPU_LAUNCH_CHECK();
}

template <class T>
void launch_stage(const Strided3& src, std::int64_t N, T* dst, cudaStream_t stream) {
  const std::int64_t total = src.dim[0] * N * N;
  stage_matrix_kernel<T>
      <<<detail::grid_stride_blocks(total, kThreads, 65535 * 8), kThreads, 0, stream>>>(src, N,
                                                                                        dst);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace

void assignment_stage_matrix(const Strided3& src, std::int64_t N, float* dst, cudaStream_t stream) {
  launch_stage(src, N, dst, stream);
}
void assignment_stage_matrix(const Strided3& src, std::int64_t N, double* dst,
                             cudaStream_t stream) {
  launch_stage(src, N, dst, stream);
}

void assignment_row_norms(const float* X, std::int64_t rows, std::int64_t d, float* out,
                          cudaStream_t stream) {
  if (rows <= 0) return;
  row_norms_kernel<<<detail::grid_stride_blocks(rows * 32, kThreads), kThreads, 0, stream>>>(
      X, rows, d, out);
  OTGPU_LAUNCH_CHECK();
}

void assignment_points_epilogue(const float* G, const float* xn, const float* yn, std::int64_t K,
                                std::int64_t n, std::int64_t m, std::int64_t N, CostKind kind,
                                float* C, cudaStream_t stream) {
  const std::int64_t total = K * N * N;
  points_epilogue_kernel<<<detail::grid_stride_blocks(total, kThreads, 65535 * 8), kThreads, 0,
                           stream>>>(G, xn, yn, K, n, m, N, static_cast<int>(kind), C);
  OTGPU_LAUNCH_CHECK();
}

int assignment_auction_grid_blocks(std::int64_t K, std::int64_t N, bool f64, AuctionPath path) {
  return f64 ? grid_blocks_per_problem<double>(K, N, path)
             : grid_blocks_per_problem<float>(K, N, path);
}

std::size_t assignment_auction_scratch_bytes(std::int64_t K, std::int64_t N) {
  const auto e = static_cast<std::size_t>(K * N);
  auto al = [](std::size_t x) { return (x + 255) & ~std::size_t{255}; };
  return 2 * al(e * sizeof(double)) + 7 * al(e * sizeof(int)) +
         3 * al(e * sizeof(unsigned long long)) +
         al(static_cast<std::size_t>(K * kAuctionGridCtrlBytes));
}

void assignment_auction(const float* C, std::int64_t K, std::int64_t n, std::int64_t m,
                        std::int64_t N, const AuctionScratch& scratch, const AuctionOutputs& out,
                        std::size_t smem_optin_bytes, AuctionPath path, cudaStream_t stream) {
  launch_auction(C, K, n, m, N, scratch, out, smem_optin_bytes, path, stream);
}
void assignment_auction(const double* C, std::int64_t K, std::int64_t n, std::int64_t m,
                        std::int64_t N, const AuctionScratch& scratch, const AuctionOutputs& out,
                        std::size_t smem_optin_bytes, AuctionPath path, cudaStream_t stream) {
  launch_auction(C, K, n, m, N, scratch, out, smem_optin_bytes, path, stream);
}

}  // namespace otgpu::kernels
