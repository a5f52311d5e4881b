"""Shared helpers for the end-to-end tests of the `otgpu` command.

The binary under test is $OTGPU_BIN (ctest sets it). Every helper here is
independent of libotgpu: references are computed with numpy only, so the tests
compare the command against a separate implementation, never against itself.
"""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

# ctest treats this exit code as "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt).
SKIP_RETURN_CODE = 77

# Generous: a hang must fail the test, but a slow shared CI machine must not.
DEFAULT_TIMEOUT_S = 120


def otgpu_bin():
    path = os.environ.get("OTGPU_BIN")
    if not path:
        raise RuntimeError("set OTGPU_BIN to the path of the otgpu binary")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"OTGPU_BIN={path} is not an executable file")
    return path


def run_otgpu(args, timeout=DEFAULT_TIMEOUT_S):
    """Runs `otgpu ARGS...`; returns the CompletedProcess (text mode)."""
    return subprocess.run([otgpu_bin(), *[str(a) for a in args]], capture_output=True,
                          text=True, errors="replace", timeout=timeout, check=False)


def sqeuclidean(x, y):
    """[..., n, m] squared distances in float64, computed without cancellation tricks."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)


def euclidean(x, y):
    return np.sqrt(sqeuclidean(x, y))


def logsumexp(z, axis):
    zmax = np.max(z, axis=axis, keepdims=True)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    return np.squeeze(zmax, axis=axis) + np.log(np.sum(np.exp(z - zmax), axis=axis))


def plan_from_potentials(f, g, C, a, b, eps):
    """P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), the library's convention."""
    with np.errstate(divide="ignore"):
        logp = (np.log(a)[:, None] + np.log(b)[None, :]
                + (f[:, None] + g[None, :] - C) / eps)
    return np.exp(logp)


def entropic_value(P, C, a, b, eps):
    """<P, C> + eps KL(P | a b^T) with the generalized KL sum P log(P/ab) - P + ab."""
    ab = np.outer(a, b)
    pos = P > 0
    kl = np.sum(P[pos] * np.log(P[pos] / ab[pos])) - P.sum() + ab.sum()
    return float(np.sum(P * C) + eps * kl)


class CliTestCase(unittest.TestCase):
    """A test case with a private temporary folder and helpers to run the command."""

    maxDiff = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="otgpu_cli_test_")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def save(self, name, array):
        p = self.path(name)
        np.save(p, array, allow_pickle=False)
        return p

    def write_bytes(self, name, data):
        p = self.path(name)
        with open(p, "wb") as fh:
            fh.write(data)
        return p

    def run_ok(self, args, timeout=DEFAULT_TIMEOUT_S):
        proc = run_otgpu(args, timeout=timeout)
        self.assertEqual(proc.returncode, 0,
                         f"otgpu {' '.join(map(str, args))} failed:\n{proc.stderr}")
        return proc

    def run_json(self, args, timeout=DEFAULT_TIMEOUT_S):
        """Runs with --json; checks that stdout is exactly one JSON object."""
        proc = self.run_ok([*args, "--json"], timeout=timeout)
        text = proc.stdout.strip()
        self.assertTrue(text.startswith("{") and text.endswith("}"), proc.stdout)
        self.assertEqual(text.count("\n"), 0, "the JSON object must be on one line")
        return json.loads(text)

    def assert_clean_failure(self, args, *mentions):
        """Non-zero exit (not a signal), exactly one non-empty stderr line that starts
        with 'otgpu: error:' and mentions each of `mentions`, nothing on stdout."""
        proc = run_otgpu(args)
        cmd = "otgpu " + " ".join(map(str, args))
        self.assertGreater(proc.returncode, 0,
                           f"{cmd}: expected a failure exit code, got {proc.returncode}\n"
                           f"stderr: {proc.stderr}")
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, f"{cmd}: stderr must be one line, got:\n{proc.stderr}")
        line = lines[0]
        self.assertTrue(line.startswith("otgpu: error: ") and len(line) > 20,
                        f"{cmd}: {line!r}")
        for m in mentions:
            self.assertIn(m, line, f"{cmd}: the message should mention {m!r}")
        self.assertEqual(proc.stdout.strip(), "", f"{cmd}: unexpected stdout {proc.stdout!r}")
        return line


def npy_image(header, payload=b"", version=(1, 0), header_len=None, pad=True):
    """A raw .npy image: magic, version, header length (the true one unless
    `header_len` is given), header text (padded to 64 bytes with spaces and a
    newline when `pad`), payload bytes."""
    if isinstance(header, str):
        header = header.encode("latin1")
    len_fmt = "<H" if version[0] == 1 else "<I"
    prefix = 8 + struct.calcsize(len_fmt)
    if pad:
        total = (prefix + len(header) + 1 + 63) // 64 * 64
        header = header + b" " * (total - prefix - len(header) - 1) + b"\n"
    hl = len(header) if header_len is None else header_len
    return (b"\x93NUMPY" + bytes(version) + struct.pack(len_fmt, hl) + header + payload)


def npy_header(descr="<f8", fortran=False, shape=(3, 2)):
    shape_text = "(" + "".join(f"{s}, " for s in shape).rstrip(" ") + ")" if shape else "()"
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape_text}, }}"
