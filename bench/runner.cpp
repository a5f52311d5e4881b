// The `otgpu bench` runner: measures the rooflines (W5) first, runs the selected
// workloads of docs/benchmarks.md, and reports each figure next to its bound.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "bench.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "roofline.h"

namespace otgpu::bench {

std::vector<Workload> all_workloads() {
  std::vector<Workload> w;
  add_roofline_workloads(w);
  add_sinkhorn_workloads(w);
  add_mma_workloads(w);
  add_sliced_workloads(w);
  add_assignment_workloads(w);
  add_coupling_workloads(w);
  add_dist_workloads(w);
  add_latency_workloads(w);
  add_solution_workloads(w);
  return w;
}

std::string Context::gpu_skip_reason() const { return cpu_only ? "--backend cpu" : "needs a GPU"; }

Row skipped_gpu_row(const Context& ctx, std::string workload, std::string solver,
                    nlohmann::json params) {
  Row r;
  r.workload = std::move(workload);
  r.solver = std::move(solver);
  r.backend = "cuda";
  r.params = std::move(params);
  r.skipped = ctx.gpu_skip_reason();
  return r;
}

double per_iteration_ms(double t_iters, double t_1, int iters) {
  const double diff = (t_iters - t_1) / (iters - 1);
  return diff > 0 ? diff : t_iters / iters;
}

double median_ms(const Context& ctx, const std::function<double()>& timed_run_ms) {
  for (int k = 0; k < ctx.warmup; ++k) timed_run_ms();
  std::vector<double> ms;
  const int reps = std::max(1, ctx.repeats);
  ms.reserve(static_cast<std::size_t>(reps));
  for (int k = 0; k < reps; ++k) ms.push_back(timed_run_ms());
  std::sort(ms.begin(), ms.end());
  const std::size_t h = ms.size() / 2;
  return ms.size() % 2 ? ms[h] : 0.5 * (ms[h - 1] + ms[h]);
}

namespace {

nlohmann::json build_info(const GpuInfo* gpu) {
  nlohmann::json b = {{"commit", OTGPU_BUILD_COMMIT},
                      {"build_type", OTGPU_BUILD_TYPE},
                      {"compiler", OTGPU_BUILD_COMPILER},
                      {"cuda_toolkit", OTGPU_BUILD_CUDA},
                      {"cuda_architectures", OTGPU_BUILD_CUDA_ARCHS}};
  if (gpu != nullptr) {
    b["gpu"] = gpu->name;
    b["sm_count"] = gpu->sm_count;
    b["compute_capability"] = fmt::format("{}.{}", gpu->cc_major, gpu->cc_minor);
    b["sm_clock_mhz"] = gpu->sm_clock_mhz;
    b["mem_clock_mhz"] = gpu->mem_clock_mhz;
    b["cuda_runtime"] = gpu->runtime_version;
    b["cuda_driver"] = gpu->driver_version;
    b["gpu_memory_gib"] = gpu->global_mem_gib;
  }
  return b;
}

bool in_suite(const Workload& w, const std::string& suite) {
  return std::find(w.suites.begin(), w.suites.end(), suite) != w.suites.end();
}

std::string valid_names(const std::vector<Workload>& workloads) {
  std::string ok, planned;
  for (const auto& w : workloads) {
    std::string& list = w.implemented() ? ok : planned;
    if (!list.empty()) list += ", ";
    list += w.name;
  }
  return planned.empty() ? "valid: " + ok
                         : fmt::format("valid: {} ({}: not implemented yet)", ok, planned);
}

}  // namespace

void check_workload_names(const std::vector<std::string>& only) {
  const auto workloads = all_workloads();
  for (const auto& name : only) {
    const auto it = std::find_if(workloads.begin(), workloads.end(),
                                 [&](const Workload& w) { return w.name == name; });
    if (it == workloads.end()) {
      throw InvalidArgument(
          fmt::format("--workload: unknown workload '{}'; {} (see otgpu bench "
                      "--list)",
                      name, valid_names(workloads)));
    }
    if (!it->implemented()) {
      throw InvalidArgument(fmt::format("--workload: {} ({}) is not implemented yet; {}", name,
                                        it->description, valid_names(workloads)));
    }
  }
}

std::vector<Row> run(Context& ctx, const std::vector<std::string>& only) {
  check_workload_names(only);
  GpuInfo gpu;
  ctx.gpu_usable = otgpu::cuda_available() && query_gpu(0, gpu);
  ctx.has_gpu = !ctx.cpu_only && ctx.gpu_usable;
  if (ctx.gpu_only && !ctx.has_gpu) {
    throw DeviceUnavailable(
        "--backend cuda: no usable CUDA device 0 (no NVIDIA GPU or driver found, or a build "
        "without CUDA)");
  }
  ctx.cpu_name = cpu_model_name();
  const Limits cpu = measure_cpu_limits();
  ctx.cpu_exp_per_s = cpu.exp_per_s;
  ctx.cpu_fma_flop_per_s = cpu.fma_flop_per_s;
  ctx.cpu_fma_isa = cpu.fma_isa;
  ctx.cpu_copy_bytes_per_s = cpu.copy_bytes_per_s;
  ctx.cpu_pair_per_s = cpu.pair_per_s;
  if (ctx.has_gpu) {
    ctx.device_name = gpu.name;
    const Limits g = measure_gpu_limits(0);
    ctx.exp_per_s = g.exp_per_s;
    ctx.fma_flop_per_s = g.fma_flop_per_s;
    ctx.copy_bytes_per_s = g.copy_bytes_per_s;
    ctx.tf32_flop_per_s = g.tf32_flop_per_s;
    ctx.bf16_flop_per_s = g.bf16_flop_per_s;
  }
  ctx.build = build_info(ctx.has_gpu ? &gpu : nullptr);

  std::vector<Row> rows;
  for (const auto& w : all_workloads()) {
    if (!w.implemented()) continue;
    const bool selected = only.empty() ? in_suite(w, ctx.suite)
                                       : std::find(only.begin(), only.end(), w.name) != only.end();
    if (!selected) continue;
    std::fprintf(stderr, "bench: running %s (%s)\n", w.name.c_str(), w.description.c_str());
    std::vector<Row> produced;
    w.run(ctx, produced);
    for (auto& r : produced) {
      // --backend cuda: the CPU limits stay (they describe the machine), CPU rows go.
      const bool is_gpu = r.backend == "cuda";
      if (ctx.gpu_only && !is_gpu && r.workload != "W5") continue;
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

std::string format_list() {
  std::string out;
  for (const auto& w : all_workloads()) {
    if (!w.implemented()) {
      out += fmt::format("{:<4} {:<11} not implemented yet: {}\n", w.name, "-", w.description);
      continue;
    }
    out += fmt::format("{:<4} {:<11} {}\n", w.name, fmt::format("{}", fmt::join(w.suites, ",")),
                       w.description);
  }
  return out;
}

namespace {

constexpr std::size_t kTableWidth = 120;

/// 3 significant digits with an SI prefix: 1.59e9 exp/s -> "1.59 Gexp/s".
std::string si(double v, const std::string& unit) {
  if (!(v > 0) || !std::isfinite(v)) return "-";
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int k = 0;
  while (v >= 999.5 && k < 6) {
    v /= 1000;
    ++k;
  }
  return fmt::format("{:.3g} {}{}", v, prefixes[k], unit);
}

std::string value_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:.4g}", v.get<double>());
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return v.dump();
}

/// "B=64 n=m=512 d=32 eps=0.05": sizes first, n=m merged, then the rest.
std::string params_text(const nlohmann::json& p) {
  if (!p.is_object()) return "";
  std::vector<std::string> parts;
  std::vector<std::string> used;
  auto take = [&](const char* key) {
    if (!p.contains(key)) return;
    parts.push_back(fmt::format("{}={}", key, value_text(p[key])));
    used.emplace_back(key);
  };
  take("B");
  if (p.contains("n") && p.contains("m") && p["n"] == p["m"]) {
    parts.push_back(fmt::format("n=m={}", value_text(p["n"])));
    used.emplace_back("n");
    used.emplace_back("m");
  } else {
    take("n");
    take("m");
  }
  for (const char* k : {"d", "L", "p", "eps", "eps_rel"}) take(k);
  for (auto it = p.begin(); it != p.end(); ++it) {
    if (std::find(used.begin(), used.end(), it.key()) != used.end()) continue;
    parts.push_back(fmt::format("{}={}", it.key(), value_text(it.value())));
  }
  std::string s;
  for (const auto& part : parts) {
    if (!s.empty()) s += " ";
    s += part;
  }
  return s;
}

std::string result_text(const Row& r) {
  const auto& res = r.result;
  if (!res.is_object()) return "";
  if (res.contains("converged")) {
    std::string s = res["converged"].get<bool>() ? "converged" : "NOT converged";
    // W4e: the L1 marginal error the solve stopped at (the peers stop at the same one).
    if (res.contains("marginal_error_l1")) {
      s += fmt::format(" L1 {}", value_text(res["marginal_error_l1"]));
    }
    return s;
  }
  if (res.contains("sw2")) return fmt::format("sw2={}", value_text(res["sw2"]));
  return "";
}

std::string figure_text(const Row& r) {
  if (r.workload == "TTS" && r.result.contains("iterations")) {
    return fmt::format("{} iter", r.result["iterations"].get<long long>());
  }
  return si(r.figure, r.figure_unit);
}

std::string bound_text(const Row& r) {
  if (r.workload == "W5") return "(limit)";
  if (r.roofline > 0 && r.figure > 0) {
    return fmt::format("{:.3g}% of {}", 100.0 * r.ratio(), si(r.roofline, r.figure_unit));
  }
  return "-";
}

/// Words of `text` on lines of at most `width` characters, continuation lines
/// indented by `indent` spaces.
std::string wrap(const std::string& text, std::size_t width, std::size_t indent) {
  std::string out, line;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    const std::string word = text.substr(pos, end - pos);
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += line + "\n";
      line = std::string(indent, ' ') + word;
    } else {
      if (!line.empty() && line.back() != ' ') line += " ";
      line += word;
    }
    pos = end + 1;
  }
  return out + line + "\n";
}

std::string clip(std::string s, std::size_t width) {
  if (s.size() > width) s = s.substr(0, width - 2) + "..";
  return s;
}

}  // namespace

std::string format_table(const Context& ctx, const std::vector<Row>& rows) {
  std::string out;
  out +=
      fmt::format("otgpu bench, suite {}, commit {} ({}), CUDA {} [{}]\n", ctx.suite,
                  ctx.build.value("commit", "?"), ctx.build.value("build_type", "?"),
                  ctx.build.value("cuda_toolkit", "?"), ctx.build.value("cuda_architectures", "?"));
  if (ctx.has_gpu) {
    out += fmt::format("GPU: {} ({} SMs, {} MHz SM clock, {} MHz memory clock)\n", ctx.device_name,
                       ctx.build.value("sm_count", 0), ctx.build.value("sm_clock_mhz", 0),
                       ctx.build.value("mem_clock_mhz", 0));
  } else {
    out +=
        fmt::format("GPU: none used ({}); GPU rows are listed as skipped\n", ctx.gpu_skip_reason());
  }
  out += fmt::format("CPU: {}\n", ctx.cpu_name);
  out +=
      fmt::format("Times: median of {} timed runs after {} warm-up\n\n", ctx.repeats, ctx.warmup);

  // Footnotes numbered in order of first use.
  std::vector<std::string> footnotes;
  auto note_refs = [&](const Row& r) {
    std::string refs;
    for (const auto& n : r.notes) {
      auto it = std::find(footnotes.begin(), footnotes.end(), n);
      if (it == footnotes.end()) it = footnotes.insert(footnotes.end(), n);
      if (!refs.empty()) refs += ",";
      refs += std::to_string(it - footnotes.begin() + 1);
    }
    return refs;
  };

  std::vector<std::string> head = {"solver",   "params", "time", "figure",
                                   "vs bound", "result", "note"};
  // --peers: three more columns (peers.h), after the note.
  const bool peers =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.peer_columns; });
  if (peers) head.insert(head.end(), {"best peer", "peer time", "speedup"});
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    if (!r.skipped.empty()) {
      cells.push_back({r.solver, clip(params_text(r.params), 34),
                       fmt::format("skipped ({})", r.skipped), "", "", "", note_refs(r)});
      if (peers) cells.back().insert(cells.back().end(), {"", "", ""});
      continue;
    }
    cells.push_back({r.solver, params_text(r.params),
                     r.ms > 0 ? fmt::format("{:.4g} {}", r.ms, r.time_unit) : "-", figure_text(r),
                     bound_text(r), result_text(r), note_refs(r)});
    if (peers) {
      cells.back().insert(cells.back().end(),
                          {r.peer.empty() ? "-" : fmt::format("{} ({})", r.peer, r.peer_backend),
                           r.peer.empty() ? "" : fmt::format("{:.4g} {}", r.peer_ms, r.time_unit),
                           r.peer.empty() ? "" : fmt::format("{:.3g}x", r.speedup())});
    }
  }
  std::vector<std::size_t> width(head.size());
  for (std::size_t c = 0; c < head.size(); ++c) {
    width[c] = head[c].size();
    for (std::size_t k = 0; k < cells.size(); ++k) {
      // A skipped row's message spans the time..result columns: it sets no width there.
      if (!rows[k].skipped.empty() && c >= 2 && c <= 5) continue;
      width[c] = std::max(width[c], cells[k][c].size());
    }
  }
  // Fit kTableWidth: the params column gives way (the JSON keeps every parameter).
  std::size_t total = 2 * (width.size() - 1);
  for (auto w : width) total += w;
  if (total > kTableWidth) {
    // (--peers' three columns can exceed what params can give up: never below 12)
    const std::size_t excess = total - kTableWidth;
    width[1] = std::max<std::size_t>(12, width[1] > excess ? width[1] - excess : 0);
    for (auto& row : cells) row[1] = clip(row[1], width[1]);
  }
  auto line = [&](const std::vector<std::string>& v, bool skipped) {
    std::string s;
    for (std::size_t c = 0; c < v.size(); ++c) {
      if (skipped && c >= 3 && c <= 5) continue;
      if (skipped && c == 2) {
        // params + the message, over the columns they span.
        const std::size_t span = width[2] + width[3] + width[4] + width[5] + 6;
        s += fmt::format("{:<{}}  ", v[2], span);
        continue;
      }
      s += c + 1 < v.size() ? fmt::format("{:<{}}  ", v[c], width[c]) : v[c];
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  out += line(head, false);
  std::vector<std::string> rule;
  for (auto w : width) rule.emplace_back(w, '-');
  out += line(rule, false);
  std::string current;
  const auto workloads = all_workloads();
  for (std::size_t k = 0; k < rows.size(); ++k) {
    if (rows[k].workload != current) {
      current = rows[k].workload;
      std::string title = current;
      for (const auto& w : workloads) {
        if (w.name == current) title += ": " + w.description;
      }
      out += clip(title, kTableWidth) + "\n";
    }
    out += line(cells[k], !rows[k].skipped.empty());
  }
  if (!footnotes.empty()) {
    out += "\n";
    for (std::size_t k = 0; k < footnotes.size(); ++k) {
      out += wrap(fmt::format("[{}] {}", k + 1, footnotes[k]), kTableWidth, 4);
    }
  }
  return out;
}

namespace {

nlohmann::json number_or_null(double v) {
  return v > 0 && std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json to_json(const Context& ctx, const std::vector<Row>& rows) {
  nlohmann::json j;
  j["schema"] = "otgpu-bench/2";
  j["suite"] = ctx.suite;
  j["build"] = ctx.build;
  j["device"] = ctx.has_gpu ? ctx.device_name : std::string("none");
  j["cpu"] = ctx.cpu_name;
  j["limits"] = {{"gpu_exp_per_s", number_or_null(ctx.exp_per_s)},
                 {"gpu_fma_flop_per_s", number_or_null(ctx.fma_flop_per_s)},
                 {"gpu_copy_bytes_per_s", number_or_null(ctx.copy_bytes_per_s)},
                 {"gpu_tf32_mma_flop_per_s", number_or_null(ctx.tf32_flop_per_s)},
                 {"gpu_bf16_mma_flop_per_s", number_or_null(ctx.bf16_flop_per_s)},
                 {"cpu_exp_per_s", number_or_null(ctx.cpu_exp_per_s)},
                 {"cpu_fma_flop_per_s", number_or_null(ctx.cpu_fma_flop_per_s)},
                 {"cpu_copy_bytes_per_s", number_or_null(ctx.cpu_copy_bytes_per_s)},
                 {"cpu_pair_per_s", number_or_null(ctx.cpu_pair_per_s)}};
  j["repeats"] = ctx.repeats;
  j["warmup"] = ctx.warmup;
  auto& arr = j["rows"] = nlohmann::json::array();
  for (const auto& r : rows) {
    const bool ran = r.skipped.empty();
    arr.push_back({{"workload", r.workload},
                   {"solver", r.solver},
                   {"backend", r.backend},
                   {"params", r.params},
                   {"status", ran ? "ok" : "skipped"},
                   {"skipped_reason", ran ? nlohmann::json(nullptr) : nlohmann::json(r.skipped)},
                   {"time_ms", number_or_null(r.ms)},
                   {"time_unit", r.time_unit},
                   {"figure", number_or_null(r.figure)},
                   {"figure_unit", r.figure_unit},
                   {"roofline", number_or_null(r.roofline)},
                   {"bound", r.bound},
                   {"ratio", number_or_null(r.ratio())},
                   {"bound_ms", number_or_null(r.bound_ms())},
                   {"result", r.result.is_null() ? nlohmann::json::object() : r.result},
                   {"notes", r.notes}});
    if (r.peer_columns) {  // --peers (peers.h)
      arr.back()["best_peer"] = r.peer.empty() ? nlohmann::json(nullptr)
                                               : nlohmann::json{{"peer", r.peer},
                                                                {"backend", r.peer_backend},
                                                                {"version", r.peer_version},
                                                                {"ms", r.peer_ms},
                                                                {"time_unit", r.time_unit}};
      arr.back()["speedup"] = number_or_null(r.speedup());
    }
  }
  return j;
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string csv_number(double v) {
  return v > 0 && std::isfinite(v) ? fmt::format("{}", v) : std::string();
}

/// "n=512;m=512;d=32": every key, full precision.
std::string csv_pairs(const nlohmann::json& o) {
  std::string s;
  if (!o.is_object()) return s;
  for (auto it = o.begin(); it != o.end(); ++it) {
    if (!s.empty()) s += ";";
    s += fmt::format("{}={}", it.key(),
                     it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
  }
  return s;
}

}  // namespace

std::string to_csv(const std::vector<Row>& rows) {
  std::string out =
      "workload,solver,backend,status,params,time_ms,time_unit,figure,figure_unit,bound,"
      "roofline,ratio,bound_ms,result,notes";
  const bool peers =
      std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.peer_columns; });
  out += peers ? ",best_peer,peer_backend,peer_ms,speedup\n" : "\n";  // --peers (peers.h)
  for (const auto& r : rows) {
    std::string notes;
    for (const auto& n : r.notes) {
      if (!notes.empty()) notes += " | ";
      notes += n;
    }
    const std::vector<std::string> f = {
        r.workload,
        r.solver,
        r.backend,
        r.skipped.empty() ? std::string("ok") : fmt::format("skipped: {}", r.skipped),
        csv_pairs(r.params),
        csv_number(r.ms),
        r.time_unit,
        csv_number(r.figure),
        r.figure_unit,
        r.bound,
        csv_number(r.roofline),
        csv_number(r.ratio()),
        csv_number(r.bound_ms()),
        csv_pairs(r.result),
        notes};
    std::vector<std::string> g = f;
    if (peers)
      g.insert(g.end(), {r.peer, r.peer_backend, csv_number(r.peer_ms), csv_number(r.speedup())});
    for (std::size_t k = 0; k < g.size(); ++k) {
      if (k > 0) out += ",";
      out += csv_field(g[k]);
    }
    out += "\n";
  }
  return out;
}

}  // namespace otgpu::bench
