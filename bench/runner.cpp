// The `otgpu bench` runner: measures the rooflines (W5) first, runs the selected
// workloads of docs/benchmarks.md, and reports each figure next to its bound.
#include <fmt/format.h>

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
  add_sliced_workloads(w);
  add_latency_workloads(w);
  return w;
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

}  // namespace

std::vector<Row> run(Context& ctx, const std::vector<std::string>& only) {
  GpuInfo gpu;
  ctx.has_gpu = !ctx.cpu_only && otgpu::cuda_available() && query_gpu(0, gpu);
  if (ctx.gpu_only && !ctx.has_gpu) {
    throw DeviceUnavailable(
        "bench --backend cuda: no usable CUDA device 0 (or built without CUDA)");
  }
  ctx.cpu_name = cpu_model_name();
  const Limits cpu = measure_cpu_limits();
  ctx.cpu_exp_per_s = cpu.exp_per_s;
  ctx.cpu_fma_flop_per_s = cpu.fma_flop_per_s;
  ctx.cpu_copy_bytes_per_s = cpu.copy_bytes_per_s;
  if (ctx.has_gpu) {
    ctx.device_name = gpu.name;
    const Limits g = measure_gpu_limits(0);
    ctx.exp_per_s = g.exp_per_s;
    ctx.fma_flop_per_s = g.fma_flop_per_s;
    ctx.copy_bytes_per_s = g.copy_bytes_per_s;
  }
  ctx.build = build_info(ctx.has_gpu ? &gpu : nullptr);

  const auto workloads = all_workloads();
  for (const auto& name : only) {
    const bool known = std::any_of(workloads.begin(), workloads.end(),
                                   [&](const Workload& w) { return w.name == name; });
    if (!known) throw InvalidArgument(fmt::format("bench --workload: unknown workload '{}'", name));
  }
  std::vector<Row> rows;
  for (const auto& w : workloads) {
    const bool selected = only.empty() ? in_suite(w, ctx.suite)
                                       : std::find(only.begin(), only.end(), w.name) != only.end();
    if (!selected) continue;
    std::fprintf(stderr, "bench: running %s (%s)\n", w.name.c_str(), w.description.c_str());
    std::vector<Row> produced;
    w.run(ctx, produced);
    for (auto& r : produced) {
      const bool is_gpu = r.backend == "cuda";
      if ((ctx.cpu_only && is_gpu) || (ctx.gpu_only && !is_gpu && r.workload != "W5")) continue;
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

namespace {

std::string si(double v, const std::string& unit) {
  if (v == 0) return "-";
  const char* prefixes[] = {"", "K", "M", "G", "T", "P"};
  int k = 0;
  while (std::abs(v) >= 1000 && k < 5) {
    v /= 1000;
    ++k;
  }
  return fmt::format("{:.3g} {}{}", v, prefixes[k], unit);
}

std::string params_text(const nlohmann::json& p) {
  std::string s;
  if (!p.is_object()) return s;
  for (auto it = p.begin(); it != p.end(); ++it) {
    if (!s.empty()) s += " ";
    s += it.key() + "=" +
         (it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
  }
  return s;
}

}  // namespace

std::string format_table(const Context& ctx, const std::vector<Row>& rows) {
  std::string out;
  out +=
      fmt::format("otgpu bench — suite {} — commit {} ({}), CUDA {} [{}]\n", ctx.suite,
                  ctx.build.value("commit", "?"), ctx.build.value("build_type", "?"),
                  ctx.build.value("cuda_toolkit", "?"), ctx.build.value("cuda_architectures", "?"));
  if (ctx.has_gpu) {
    out += fmt::format("GPU: {} ({} SMs, {} MHz SM clock, {} MHz memory clock)\n", ctx.device_name,
                       ctx.build.value("sm_count", 0), ctx.build.value("sm_clock_mhz", 0),
                       ctx.build.value("mem_clock_mhz", 0));
  } else {
    out += "GPU: none (CPU rows only)\n";
  }
  out += fmt::format("CPU: {}\n\n", ctx.cpu_name);
  const std::vector<std::string> head = {"workload", "solver",   "backend", "params", "time",
                                         "figure",   "roofline", "ratio",   "note"};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    cells.push_back({r.workload, r.solver, r.backend, params_text(r.params),
                     r.ms > 0 ? fmt::format("{:.4g} {}", r.ms, r.time_unit) : "-",
                     si(r.figure, r.figure_unit),
                     r.roofline > 0 ? si(r.roofline, r.figure_unit) + " (" + r.bound + ")" : "-",
                     r.roofline > 0 ? fmt::format("{:.1f}%", 100.0 * r.ratio()) : "-", r.note});
  }
  std::vector<std::size_t> width(head.size());
  for (std::size_t c = 0; c < head.size(); ++c) {
    width[c] = head[c].size();
    for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& v) {
    std::string s;
    for (std::size_t c = 0; c < v.size(); ++c) {
      s += c + 1 < v.size() ? fmt::format("{:<{}}  ", v[c], width[c]) : v[c];
    }
    return s + "\n";
  };
  out += line(head);
  std::vector<std::string> rule;
  for (auto w : width) rule.emplace_back(w, '-');
  out += line(rule);
  for (const auto& row : cells) out += line(row);
  return out;
}

nlohmann::json to_json(const Context& ctx, const std::vector<Row>& rows) {
  nlohmann::json j;
  j["suite"] = ctx.suite;
  j["build"] = ctx.build;
  j["device"] = ctx.has_gpu ? ctx.device_name : std::string("none");
  j["cpu"] = ctx.cpu_name;
  j["limits"] = {{"gpu_exp_per_s", ctx.exp_per_s},
                 {"gpu_fma_flop_per_s", ctx.fma_flop_per_s},
                 {"gpu_copy_bytes_per_s", ctx.copy_bytes_per_s},
                 {"cpu_exp_per_s", ctx.cpu_exp_per_s},
                 {"cpu_fma_flop_per_s", ctx.cpu_fma_flop_per_s},
                 {"cpu_copy_bytes_per_s", ctx.cpu_copy_bytes_per_s}};
  j["repeats"] = ctx.repeats;
  auto& arr = j["rows"] = nlohmann::json::array();
  for (const auto& r : rows) {
    arr.push_back({{"workload", r.workload},
                   {"solver", r.solver},
                   {"backend", r.backend},
                   {"params", r.params},
                   {"time_ms", r.ms},
                   {"time_unit", r.time_unit},
                   {"figure", r.figure},
                   {"figure_unit", r.figure_unit},
                   {"roofline", r.roofline},
                   {"bound", r.bound},
                   {"ratio", r.ratio()},
                   {"note", r.note}});
  }
  return j;
}

}  // namespace otgpu::bench
