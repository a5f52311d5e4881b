"""The plan P from the potentials that `otgpu sinkhorn --f-out --g-out` writes, in numpy.

    python3 plan_from_potentials.py [path/to/otgpu]

Solves a small weighted problem with the command, rebuilds
P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) in the log domain and checks its
marginals against the command's report. Exit 0 when every check holds, 1 when one
fails, 77 (skipped) without numpy.
"""

import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("plan_from_potentials.py: numpy is not installed; skipped")
    sys.exit(77)


def plan(x, y, a, b, f, g, eps):
    """P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) for the squared Euclidean cost."""
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    logP = np.log(a)[:, None] + np.log(b)[None, :] + (f[:, None] + g[None, :] - C) / eps
    return np.exp(logP), C


def main():
    otgpu = sys.argv[1] if len(sys.argv) > 1 else "otgpu"
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 2)), rng.random((9, 2)) + 0.1
    a, b = rng.random(6) + 0.1, rng.random(9) + 0.1
    a, b = a / a.sum(), b / b.sum()
    with tempfile.TemporaryDirectory() as tmp:
        path = {k: os.path.join(tmp, k + ".npy") for k in ("x", "y", "a", "b", "f", "g")}
        for k, v in (("x", x), ("y", y), ("a", a), ("b", b)):
            np.save(path[k], v)
        out = subprocess.run(
            [otgpu, "sinkhorn", "--x", path["x"], "--y", path["y"], "--a", path["a"],
             "--b", path["b"], "--eps", "0.05", "--tol", "1e-10", "--backend", "cpu",
             "--f-out", path["f"], "--g-out", path["g"], "--json"],
            capture_output=True, text=True, check=True, timeout=120)
        report = json.loads(out.stdout)["problems"][0]
        f, g = np.load(path["f"]), np.load(path["g"])

    # The absolute eps the solver used (differs from --eps with --eps-relative).
    P, C = plan(x, y, a, b, f, g, report["eps"])
    checks = [
        ("||P^T 1 - b||_1 (exact after a g-update)", np.abs(P.sum(0) - b).sum(), 0.0, 1e-12),
        ("||P 1 - a||_1 vs marginal_error", np.abs(P.sum(1) - a).sum(),
         report["marginal_error"], 1e-12),
        ("<P, C> vs transport_cost", (P * C).sum(), report["transport_cost"],
         1e-9 * report["transport_cost"]),
    ]
    ok = report["converged"]
    for name, got, want, tol in checks:
        good = abs(got - want) <= tol
        ok = ok and good
        print(f"{name:44s} {got:.3e} vs {want:.3e}  {'ok' if good else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
