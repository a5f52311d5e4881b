// The pieces of `otgpu batch` that do not run anything: reading JOBS.jsonl, turning a
// job into the argv of its command, the RESULTS.jsonl file (appends that never
// interleave, --resume), and the rank of this process under mpirun.
//
// A job is one JSON object per line:
//   {"id": "a1", "command": "sinkhorn", "x": "X.npy", "y": "Y.npy", "eps": 0.05,
//    "divergence": true, "f_out": "f_a1.npy"}
// Every field other than id and command is a flag of the command, spelled without the
// leading dashes ('_' may stand for '-'): it becomes `--eps 0.05`, a boolean flag
// `--divergence` (false: not given), an array `--flag v1 v2`, null: not given. The
// command's own CLI11 definition then parses that argv, so a job accepts exactly the
// flags, values and combinations `otgpu <command>` accepts, with the same messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace CLI {
class App;
class ParseError;
}  // namespace CLI

namespace otgpu::cli {

/// One line of JOBS.jsonl that holds something (blank lines are not jobs).
struct Job {
  int line = 0;           ///< 1-based line number in the jobs file
  std::size_t index = 0;  ///< 0-based position among the jobs (mpirun splits on it)
  bool has_id = false;    ///< false: the line is not an object with a string id
  std::string id;         ///< the job's "id"
  std::string command;    ///< the job's "command" (may be empty: the job fails)
  nlohmann::json fields;  ///< every other field, an object
  std::string error;      ///< non-empty: the line is malformed; the job fails with this
};

/// Reads every job of `path` (flag: "--jobs", for messages). A line that is not a JSON
/// object with a non-empty string "id" becomes a job that fails naming its line; a
/// missing or non-string "command" fails the same way. Throws IoError when the file
/// cannot be read and InvalidArgument when two lines share an id (naming both lines).
std::vector<Job> read_jobs(const std::string& flag, const std::string& path);

/// Where a worker runs its jobs: the CPU with `cpu_threads` threads (0: the library
/// chooses), or CUDA device `device` (cpu_threads unused).
struct Placement {
  bool gpu = false;
  int device = 0;
  int cpu_threads = 1;
  /// "cpu" or "cuda:K", the "device" of a result line.
  std::string name() const;
};

/// The argv of `job` for the command `sub` (without the program name): the command
/// name, the job's fields as flags, then the placement (--backend and --device or
/// --threads, where the command has those flags and the job did not set --threads;
/// no --threads for cpu_threads 0)
/// and --json. Throws InvalidArgument for a field that cannot be a flag (an object,
/// a non-boolean value for a boolean flag, device or backend, which --devices sets).
/// Flags the command does not know are passed on for CLI11 to refuse.
std::vector<std::string> job_argv(const Job& job, const CLI::App& sub, const Placement& where);

/// The one-line message `otgpu` prints for a command-line syntax error (main.cpp's
/// wording: a number that does not convert names the flag and says what it takes).
std::string parse_error_message(const CLI::ParseError& e);

/// This process's place among the ranks of an MPI launch, read from the launcher's
/// environment (OpenMPI: OMPI_COMM_WORLD_RANK/SIZE and OMPI_COMM_WORLD_LOCAL_RANK/
/// LOCAL_SIZE; MPICH/Hydra and others: PMI_RANK/PMI_SIZE and MPI_LOCALRANKID/
/// MPI_LOCALNRANKS). No MPI library is linked or called. Alone: rank 0 of 1.
struct RankInfo {
  int rank = 0, size = 1;              ///< in the whole launch
  int local_rank = 0, local_size = 1;  ///< on this node (for sharing its cores / GPUs)
  std::string source;                  ///< "OMPI_COMM_WORLD", "PMI" or "" (alone)
};
/// Throws InvalidArgument naming the variable when it is set but not a valid rank.
RankInfo rank_from_environment();

/// RESULTS.jsonl, appended to by every worker thread and every rank. Each line goes
/// out in one write(2) on an O_APPEND descriptor under an exclusive flock(2) (and a
/// mutex between this process's threads), so lines of concurrent writers never
/// interleave; a last line cut short by a killed run is ended first.
class ResultsFile {
 public:
  /// Opens `path` for appending, creating it; `truncate` empties it first.
  ResultsFile(const std::string& flag, const std::string& path, bool truncate);
  ~ResultsFile();
  ResultsFile(const ResultsFile&) = delete;
  ResultsFile& operator=(const ResultsFile&) = delete;
  /// Appends `line` and a newline. Throws IoError.
  void append(const std::string& line);

 private:
  std::string flag_, path_;
  int fd_ = -1;
  std::mutex mutex_;
};

/// What an existing RESULTS.jsonl holds (read under a shared flock): the ids with a
/// result line, and those with a line of status "ok". Lines that are not JSON
/// objects (a line cut by a kill) are ignored. A missing file holds nothing.
struct ExistingResults {
  bool exists = false;
  std::set<std::string> ids;
  std::set<std::string> ok_ids;
};
ExistingResults read_existing_results(const std::string& flag, const std::string& path);

}  // namespace otgpu::cli
