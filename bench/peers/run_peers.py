#!/usr/bin/env python3
"""Runs every peer script of bench/peers/ (sinkhorn_peers.py, sliced_peers.py, w4_*.py and
any other *_peers.py or w*_*.py next to this file) and merges their JSON into one file
for `otgpu bench --peers FILE`:

    {"machine": str, "date": str, "peers": [{"workload", "params", "peer", "backend",
     "ms", "time_unit", "version"}], "skipped": [{"peer", "reason"}],
     "scripts": [{"script", "rc", "seconds"}]}

A script that fails or times out is recorded with its exit status and skipped; the others
still run. Each script gets --out FILE --suite --repeats --device [--max-n].
Usage: python3 bench/peers/run_peers.py --out peers.json [--suite full] [--device cuda]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_PEERS = {"run_peers.py", "peer_common.py"}


def peer_scripts(folder=HERE):
    names = sorted(f for f in os.listdir(folder)
                   if f.endswith(".py") and f not in NOT_PEERS and not f.startswith("test_")
                   and (f.endswith("_peers.py") or (f.startswith("w") and "_" in f)))
    return [os.path.join(folder, f) for f in names]


def merge(documents):
    """One document from several: entries and skips concatenated, the first machine."""
    out = {"machine": "", "date": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "peers": [], "skipped": []}
    for doc in documents:
        if not out["machine"] and doc.get("machine"):
            out["machine"] = doc["machine"]
        for e in doc.get("peers", []):
            missing = {"workload", "params", "peer", "backend", "ms", "time_unit"} - set(e)
            if missing:
                raise ValueError(f"peer entry without {sorted(missing)}: {e}")
            out["peers"].append(e)
        out["skipped"].extend(doc.get("skipped", []))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--suite", default="quick", choices=["quick", "full"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-n", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    ap.add_argument("--only", default="", help="comma-separated script names to run")
    args = ap.parse_args()
    scripts = peer_scripts()
    if args.only:
        keep = set(args.only.split(","))
        scripts = [s for s in scripts if os.path.basename(s) in keep]
    docs, runs = [], []
    with tempfile.TemporaryDirectory(prefix="otgpu_peers_") as tmp:
        for path in scripts:
            name = os.path.basename(path)
            out = os.path.join(tmp, name + ".json")
            cmd = [sys.executable, path, "--out", out, "--suite", args.suite, "--repeats",
                   str(args.repeats), "--device", args.device]
            if args.max_n is not None:
                cmd += ["--max-n", str(args.max_n)]
            print(f"run_peers: {name}", file=sys.stderr)
            t0 = time.time()
            try:
                rc = subprocess.run(cmd, cwd=HERE, timeout=args.timeout, check=False).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            runs.append({"script": name, "rc": rc, "seconds": round(time.time() - t0, 1)})
            if rc == 0 and os.path.exists(out):
                with open(out) as fh:
                    docs.append(json.load(fh))
            else:
                docs.append({"skipped": [{"peer": name, "reason": f"script exit {rc}"}]})
    merged = merge(docs)
    merged["scripts"] = runs
    with open(args.out, "w") as fh:
        json.dump(merged, fh, indent=1)
        fh.write("\n")
    print(f"run_peers: {len(merged['peers'])} entries from {len(scripts)} scripts -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
