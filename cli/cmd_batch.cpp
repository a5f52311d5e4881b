// `otgpu batch`: many independent problems from a JSONL file of jobs, spread over
// every device (one worker thread per GPU, each with its own per-thread GPU context,
// or N CPU workers), one result line per job appended to RESULTS.jsonl as it
// finishes. Each job runs the very command `otgpu <command> --json` would run: its
// fields become that command's argv, parsed by the command's own CLI11 definition on
// a fresh App, and its --json object becomes the job's result (batch_capture.h).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "batch_capture.h"
#include "batch_jobs.h"
#include "commands.h"
#include "common.h"
#include "npy.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct BatchArgs {
  std::string jobs, out;
  std::string devices = "all";
  int workers = 1;
  bool resume = false;
  bool force = false;
  bool progress = false;
  CLI::Option* workers_opt = nullptr;
  std::vector<AddCommand> commands;  ///< the commands a job may name
};

/// What one job produced.
struct Outcome {
  bool ok = false;
  std::string error;
  nlohmann::json result;  ///< the command's --json object (null: none)
  std::string warning;
};

/// One line, whatever a message holds.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

std::string command_names(const std::vector<AddCommand>& commands) {
  CLI::App app;
  for (const AddCommand add : commands) add(app);
  std::string names;
  for (const CLI::App* sub : app.get_subcommands({})) {
    names += (names.empty() ? "" : ", ") + sub->get_name();
  }
  return names;
}

/// Runs one job on the calling thread: a fresh App with every job command (CLI11
/// keeps the values of a parse in the variables it binds, so an App is never reused),
/// the job's argv parsed and run by its command under a JobCapture.
Outcome run_job(const Job& job, const Placement& where, const std::vector<AddCommand>& commands) {
  Outcome o;
  if (!job.error.empty()) {
    o.error = job.error;
    return o;
  }
  JobCapture capture;
  try {
    CLI::App app{"otgpu"};
    app.require_subcommand(1);
    for (const AddCommand add : commands) add(app);
    const CLI::App* sub = nullptr;
    for (const CLI::App* s : app.get_subcommands({})) {
      if (s->get_name() == job.command) sub = s;
    }
    if (sub == nullptr) {
      o.error =
          fmt::format("unknown command '{}' (commands: {})", job.command, command_names(commands));
      return o;
    }
    std::vector<std::string> argv = job_argv(job, *sub, where);
    std::reverse(argv.begin(), argv.end());  // CLI11 takes the arguments reversed
    const ScopedJobCapture scope(capture);
    app.parse(argv);
  } catch (const CLI::ParseError& e) {
    o.error = parse_error_message(e);
  } catch (const Error& e) {
    o.error = e.what();
  } catch (const std::bad_alloc&) {
    o.error = "out of host memory";
  } catch (const std::exception& e) {
    o.error = e.what();
  }
  if (capture.has_result) o.result = std::move(capture.result);
  std::string warnings;
  for (const std::string& w : capture.warnings) warnings += (warnings.empty() ? "" : "; ") + w;
  if (o.error.empty() && capture.exit_code != 0) {
    // The command would have ended non-zero after its outputs (sinkhorn --strict).
    o.error = warnings.empty()
                  ? fmt::format("the command ended with exit status {}", capture.exit_code)
                  : warnings;
  } else if (o.error.empty() && !capture.has_result) {
    o.error = fmt::format("command '{}' printed no JSON result", job.command);
  } else if (o.error.empty()) {
    o.ok = true;
    o.warning = warnings;
  }
  o.error = one_line(o.error);
  o.warning = one_line(o.warning);
  return o;
}

/// "all", "cpu" or a list of device ordinals "0,2" -> the workers' placements.
std::vector<Placement> resolve_placements(const BatchArgs& args, const RankInfo& rank) {
  const unsigned hw = std::max(1U, std::thread::hardware_concurrency());
  auto cpu_workers = [&] {
    // Cores split between the workers of every rank on this node: no oversubscription.
    // A lone worker keeps the library's choice (0: the idle cores, one thread for small
    // sweeps): a fixed count above the idle cores makes every OpenMP barrier wait for
    // a descheduled thread (measured: 200 jobs n = 256 ran 10x slower with --threads 2
    // than with 1 on a loaded 2-core machine).
    const int sharers = args.workers * std::max(1, rank.local_size);
    const int threads = sharers == 1 ? 0 : std::max(1, static_cast<int>(hw) / sharers);
    return std::vector<Placement>(static_cast<std::size_t>(args.workers),
                                  Placement{false, 0, threads});
  };
  std::vector<int> devices;
  if (args.devices == "cpu") return cpu_workers();
  if (args.devices == "all") {
    const int count = cuda_device_count();
    if (count == 0) return cpu_workers();
    // Ranks sharing a node share its GPUs: local rank l takes the devices d with
    // d % local_size == l (or device l % count when there are more ranks than GPUs).
    for (int d = 0; d < count; ++d) {
      if (rank.local_size <= count ? d % rank.local_size == rank.local_rank
                                   : d == rank.local_rank % count) {
        devices.push_back(d);
      }
    }
  } else {
    std::set<int> seen;
    std::size_t start = 0;
    while (start <= args.devices.size()) {
      std::size_t end = args.devices.find(',', start);
      if (end == std::string::npos) end = args.devices.size();
      const std::string item = args.devices.substr(start, end - start);
      start = end + 1;
      int d = -1;
      const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), d);
      if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || d < 0) {
        throw InvalidArgument(fmt::format(
            "--devices: expected all, cpu or a list of device ordinals such as 0,2, got '{}'",
            npy::printable_path(args.devices)));
      }
      if (!seen.insert(d).second) {
        throw InvalidArgument(fmt::format("--devices: device {} is listed twice", d));
      }
      devices.push_back(d);
    }
    for (const int d : devices) {
      if (d >= cuda_device_count()) {
        throw DeviceUnavailable(fmt::format(
            "--devices: device {} is not usable ({} CUDA device(s) here{})", d, cuda_device_count(),
            cuda_device_count() == 0 ? ", or a build without CUDA" : ""));
      }
    }
  }
  if (args.workers_opt->count() > 0) {
    throw InvalidArgument(fmt::format(
        "--workers sets the number of CPU workers; on GPUs there is one worker per device "
        "(here {} device(s); --devices cpu runs on the CPU)",
        devices.size()));
  }
  std::vector<Placement> out;
  for (const int d : devices) out.push_back(Placement{true, d, 1});
  return out;
}

/// The line on stderr: done/total, failures, rate and time left; rewritten in place.
class Progress {
 public:
  Progress(bool enabled, std::size_t total, std::string who)
      : enabled_(enabled), total_(total), who_(std::move(who)), start_(Clock::now()) {}

  void update(std::size_t done, std::size_t failed, bool last) {
    if (!enabled_) return;
    const double t = std::chrono::duration<double>(Clock::now() - start_).count();
    if (!last && shown_ && t - last_shown_ < 0.2) return;
    shown_ = true;
    last_shown_ = t;
    const double rate = t > 0 ? static_cast<double>(done) / t : 0.0;
    std::string eta = "-";
    if (rate > 0) eta = fmt::format("{:.0f} s", static_cast<double>(total_ - done) / rate);
    std::fputs(fmt::format("\rotgpu: batch{} {}/{} done, {} failed, {:.2f} jobs/s, ETA {}   ", who_,
                           done, total_, failed, rate, last ? "0 s" : eta)
                   .c_str(),
               stderr);
    if (last) std::fputs("\n", stderr);
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::size_t total_;
  std::string who_;
  Clock::time_point start_;
  bool shown_ = false;
  double last_shown_ = 0;
};

void run_batch(const BatchArgs& args) {
  require_at_least("--workers", args.workers, 1);
  if (args.resume && args.force) {
    throw InvalidArgument("--resume keeps RESULTS and --force overwrites it: give one of them");
  }
  check_outputs({{"--jobs", args.jobs}}, {{"--out", args.out}});
  const RankInfo rank = rank_from_environment();
  const bool ranked = rank.size > 1;
  if (ranked && args.force) {
    throw InvalidArgument(fmt::format(
        "--force: under mpirun ({} ranks) no rank may empty {} while the others append to it; "
        "delete it before the launch, or use --resume",
        rank.size, npy::printable_path(args.out)));
  }
  const std::vector<Placement> placements = resolve_placements(args, rank);
  const std::vector<Job> jobs = read_jobs("--jobs", args.jobs);

  // This rank's share: job index % size == rank.
  std::vector<const Job*> mine;
  for (const Job& job : jobs) {
    if (job.index % static_cast<std::size_t>(rank.size) == static_cast<std::size_t>(rank.rank)) {
      mine.push_back(&job);
    }
  }

  const ExistingResults existing = read_existing_results("--out", args.out);
  std::vector<const Job*> todo;
  if (args.resume) {
    for (const Job* job : mine) {
      if (!(job->has_id && existing.ok_ids.count(job->id) > 0)) todo.push_back(job);
    }
  } else {
    todo = mine;
    if (existing.exists && !args.force) {
      // Alone, any existing file is refused. Under mpirun the other ranks create and
      // fill it at the same time, so only a line for one of this rank's jobs tells
      // that it comes from an earlier run.
      const Job* seen = nullptr;
      for (const Job* job : mine) {
        if (job->has_id && existing.ids.count(job->id) > 0) {
          seen = job;
          break;
        }
      }
      if (!ranked || seen != nullptr) {
        throw InvalidArgument(fmt::format(
            "--out: {} already exists{}: use --resume to run only the jobs without an ok "
            "result{}",
            npy::printable_path(args.out),
            seen != nullptr ? fmt::format(" and holds a result of job \"{}\"", seen->id) : "",
            ranked ? "" : ", or --force to overwrite it"));
      }
    }
  }

  ResultsFile results("--out", args.out, args.force);
  const bool show = args.progress || isatty(fileno(stderr)) != 0;
  Progress progress(show, todo.size(),
                    ranked ? fmt::format(" rank {}/{}", rank.rank, rank.size) : "");

  std::atomic<std::size_t> next{0};
  std::mutex mu;  // guards the counters, the progress line and the first fatal error
  std::size_t done = 0, failed = 0;
  std::exception_ptr fatal;
  std::atomic<bool> stop{false};

  auto worker = [&](const Placement& where) {
    // Work stealing from one shared queue: each free worker takes the next job.
    while (!stop.load()) {
      const std::size_t k = next.fetch_add(1);
      if (k >= todo.size()) return;
      const Job& job = *todo[k];
      const auto t0 = Clock::now();
      Outcome o = run_job(job, where, args.commands);
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      // Fields in a fixed order (id first, for people reading the file); the result
      // keeps the command's own order. dump/parse round-trips every double exactly.
      using Line = nlohmann::ordered_json;
      Line line = {{"id", job.has_id ? Line(job.id) : Line(nullptr)},
                   {"line", job.line},
                   {"status", o.ok ? "ok" : "error"},
                   {"error", o.ok ? Line(nullptr) : Line(o.error)},
                   {"warning", o.warning.empty() ? Line(nullptr) : Line(o.warning)},
                   {"result", Line::parse(o.result.dump())},
                   {"device", where.name()},
                   {"time_ms", ms}};
      if (ranked) line["rank"] = rank.rank;
      try {
        results.append(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      } catch (...) {
        const std::lock_guard<std::mutex> hold(mu);
        if (!fatal) fatal = std::current_exception();
        stop = true;
        return;
      }
      const std::lock_guard<std::mutex> hold(mu);
      ++done;
      if (!o.ok) ++failed;
      progress.update(done, failed, false);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(placements.size());
  for (const Placement& where : placements) threads.emplace_back(worker, where);
  for (std::thread& t : threads) t.join();
  if (fatal) std::rethrow_exception(fatal);
  progress.update(done, failed, true);
  if (failed == 0) return;
  const std::string summary = fmt::format(
      "{} of {} job(s){} failed; their errors are in {}", failed, done,
      ranked ? fmt::format(" of rank {}", rank.rank) : "", npy::printable_path(args.out));
  // mpirun aborts every rank still at work once one exits non-zero, so under it a
  // failed job is only reported: the exit status stays 0 (RESULTS has the errors).
  if (ranked) {
    warn(summary + " (exit status 0 under mpirun, which would abort the other ranks)");
    return;
  }
  throw Error(summary);
}

}  // namespace

void add_batch_command(CLI::App& app, std::vector<AddCommand> job_commands) {
  auto args = std::make_shared<BatchArgs>();
  args->commands = std::move(job_commands);
  auto* sub = app.add_subcommand(
      "batch",
      "Run many independent jobs (one JSON object per line: an id, a command and its flags) "
      "over every GPU or several CPU workers; one result line per job in RESULTS");
  sub->add_option("--jobs", args->jobs,
                  "JOBS.jsonl: one job per line, e.g. {\"id\": \"a\", \"command\": \"sinkhorn\", "
                  "\"x\": \"X.npy\", \"y\": \"Y.npy\", \"eps\": 0.05}")
      ->required();
  sub->add_option("--out", args->out,
                  "RESULTS.jsonl: one line per job as it finishes (id, status, error, result, "
                  "device, time_ms)")
      ->required();
  sub->add_option("--devices", args->devices,
                  "all (every GPU, else the CPU; default), cpu, or device ordinals such as 0,2");
  args->workers_opt =
      sub->add_option("--workers", args->workers,
                      "CPU workers (default 1); the cores are split between them (--threads each)");
  sub->add_flag("--resume", args->resume,
                "skip the jobs whose id has an ok line in RESULTS; append the others");
  sub->add_flag("--force", args->force, "overwrite an existing RESULTS");
  sub->add_flag("--progress", args->progress,
                "show the progress line on stderr (default: only when stderr is a terminal)");
  sub->callback([args] { run_batch(*args); });
}

}  // namespace otgpu::cli
