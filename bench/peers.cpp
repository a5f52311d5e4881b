// Peers beside our rows: reading the peers file and matching it (peers.h).
#include "peers.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "otgpu/error.h"

namespace otgpu::bench {

namespace {

std::string text_of(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string()) {
    throw InvalidArgument(fmt::format("{}: \"{}\" must be a string", where, key));
  }
  return j[key].get<std::string>();
}

/// JSON values equal as the bench means them: numbers by value, the rest exactly.
bool same_value(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  return a == b;
}

}  // namespace

PeerFile load_peers(const std::string& path, const std::string& flag) {
  std::ifstream in(path);
  if (!in) throw IoError(fmt::format("{}: cannot read {}", flag, path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw InvalidArgument(fmt::format("{}: {} is not JSON: {}", flag, path, e.what()));
  }
  const std::string where = fmt::format("{}: {}", flag, path);
  if (!doc.is_object() || !doc.contains("peers") || !doc["peers"].is_array()) {
    throw InvalidArgument(
        fmt::format("{}: expected an object with a \"peers\" array (bench/peers/run_peers.py "
                    "writes one)",
                    where));
  }
  PeerFile f;
  f.path = path;
  f.machine = doc.value("machine", std::string());
  f.date = doc.value("date", std::string());
  std::size_t k = 0;
  for (const auto& e : doc["peers"]) {
    const std::string at = fmt::format("{}: peers[{}]", where, k++);
    if (!e.is_object()) throw InvalidArgument(fmt::format("{}: not an object", at));
    PeerEntry p;
    p.workload = text_of(e, "workload", at);
    p.peer = text_of(e, "peer", at);
    p.backend = text_of(e, "backend", at);
    p.time_unit = text_of(e, "time_unit", at);
    p.version = e.contains("version") && e["version"].is_string() ? e["version"].get<std::string>()
                                                                  : std::string("?");
    if (!e.contains("params") || !e["params"].is_object()) {
      throw InvalidArgument(fmt::format("{}: \"params\" must be an object", at));
    }
    p.params = e["params"];
    if (!e.contains("ms") || !e["ms"].is_number() || !(e["ms"].get<double>() > 0) ||
        !std::isfinite(e["ms"].get<double>())) {
      throw InvalidArgument(fmt::format("{}: \"ms\" must be a positive number", at));
    }
    p.ms = e["ms"].get<double>();
    f.entries.push_back(std::move(p));
  }
  return f;
}

bool peer_matches(const Row& row, const PeerEntry& entry) {
  if (row.workload != entry.workload || !row.params.is_object()) return false;
  for (auto it = entry.params.begin(); it != entry.params.end(); ++it) {
    if (!row.params.contains(it.key()) || !same_value(row.params[it.key()], it.value())) {
      return false;
    }
  }
  return true;
}

void attach_peers(std::vector<Row>& rows, const PeerFile& peers) {
  for (Row& r : rows) {
    r.peer_columns = true;
    if (!r.skipped.empty() || !(r.ms > 0)) continue;
    const PeerEntry* best = nullptr;
    for (const PeerEntry& e : peers.entries) {
      if (e.time_unit != r.time_unit || !peer_matches(r, e)) continue;
      if (best == nullptr || e.ms < best->ms) best = &e;
    }
    if (best == nullptr) continue;
    r.peer = best->peer;
    r.peer_backend = best->backend;
    r.peer_version = best->version;
    r.peer_ms = best->ms;
  }
}

}  // namespace otgpu::bench
