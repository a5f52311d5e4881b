// Run under mpirun -np R: `dist_mpi_check solve` compares the sharded solve of every
// case of dist_cases.h over MPI_COMM_WORLD with the single-process solve (each rank
// solves the whole problem too); `dist_mpi_check bad` gives the last rank a NaN in x
// and checks that every rank throws one agreed error (the test's TIMEOUT catches a
// hang); `dist_mpi_check midsolve` (R >= 2) poisons rank 1's progress callback
// mid-solve and checks that every rank throws the same CommError. Exit 0 when every check of this
// rank holds.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "dist_cases.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"

using namespace otgpu;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "solve";
  auto comm = dist::mpi_world();
  const int rank = comm->rank(), size = comm->size();
  int failures = 0;
  if (mode == "solve") {
    for (const auto& k : dist_test::cases()) {
      const std::string e = dist_test::check_case(*comm, k);
      if (!e.empty()) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.c_str());
        ++failures;
      }
    }
  } else if (mode == "bad") {
    const auto k = dist_test::cases()[0];
    auto D = dist_test::make_data(k);
    const auto bad = dist::row_range(k.n, size - 1, size);
    D.x[static_cast<std::size_t>(bad.begin * k.d)] = std::nan("");
    const auto r = dist::row_range(k.n, rank, size);
    std::string got;
    try {
      dist::sinkhorn(*comm, dist_test::problem_of(k, D, r), dist_test::options_of(k, D, r));
      got = "no error";
    } catch (const NonFiniteInput& e) {
      got = std::string("own: ") + e.what();
    } catch (const InvalidArgument& e) {
      got = std::string("other: ") + e.what();
    }
    const std::string want =
        rank == size - 1 ? "own: x" : "other: rank " + std::to_string(size - 1) + ": x";
    if (got.rfind(want, 0) != 0) {
      std::fprintf(stderr, "rank %d: expected '%s...', got '%s'\n", rank, want.c_str(),
                   got.c_str());
      ++failures;
    }
    if (rank == 0) std::printf("agreed error: %s\n", got.c_str());
  } else if (mode == "midsolve") {
    // Rank 1's progress callback throws at the check of iteration 20: every rank must
    // throw the same CommError naming rank 1 (one line each), none may hang.
    const auto k = dist_test::cases()[0];
    const auto D = dist_test::make_data(k);
    const auto r = dist::row_range(k.n, rank, size);
    auto o = dist_test::options_of(k, D, r);
    o.eps_init = 0;
    o.acceleration = SinkhornAcceleration::none;
    o.tol = 1e-14;
    if (rank == 1) {
      o.progress = [](const SinkhornProgress& pr) -> bool {
        if (pr.iteration == 20) throw std::runtime_error("poisoned callback");
        return true;
      };
    }
    std::string got = "no error";
    try {
      dist::sinkhorn(*comm, dist_test::problem_of(k, D, r), o);
    } catch (const dist::CommError& e) {
      got = e.what();
    }
    std::fprintf(stderr, "rank %d: %s\n", rank, got.c_str());
    if (got != "dist::sinkhorn: rank 1 failed at iteration 20: poisoned callback") ++failures;
  } else {
    std::fprintf(stderr, "usage: dist_mpi_check solve|bad|midsolve\n");
    return 2;
  }
  // Every rank's verdict, so that rank 0's line tells the whole story.
  const double total = comm->allreduce(static_cast<double>(failures), dist::ReduceOp::sum);
  if (rank == 0) std::printf("%s R=%d: %s\n", mode.c_str(), size, total == 0 ? "ok" : "FAILED");
  return total == 0 ? 0 : 1;
}
