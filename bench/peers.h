// Peers measured beside our rows (`otgpu bench --peers FILE`): the JSON that
// bench/peers/run_peers.py writes, and how its entries are matched to rows.
//
//   {"machine": str, "date": str, "peers": [{"workload": "W1", "params": {...},
//    "peer": str, "backend": "cpu"|"cuda", "ms": float, "time_unit": "ms/iter"|"ms/call",
//    "version": str}, ...]}
//
// An entry matches a row when the workload is equal and every key of the entry's params
// equals the row's (numbers compared as numbers: 4096 == 4096.0). Among the matching
// entries with the row's time unit, the fastest is the row's best peer; our speedup is
// its time over ours (> 1: we are faster).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "bench.h"

namespace otgpu::bench {

struct PeerEntry {
  std::string workload, peer, backend, time_unit, version;
  nlohmann::json params;
  double ms = 0;
};

struct PeerFile {
  std::string path, machine, date;
  std::vector<PeerEntry> entries;
};

/// Reads and checks a peers file; throws IoError (unreadable) or InvalidArgument
/// (not the format above), naming `flag`, the file and the entry.
PeerFile load_peers(const std::string& path, const std::string& flag = "--peers");

/// Equal workload and every key of the entry's params equal to the row's.
bool peer_matches(const Row& row, const PeerEntry& entry);

/// Sets every row's peer columns (peer_columns = true; the best entry where one
/// matches a row that ran).
void attach_peers(std::vector<Row>& rows, const PeerFile& peers);

}  // namespace otgpu::bench
