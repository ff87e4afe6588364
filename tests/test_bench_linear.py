"""The fused LM-head benchmark end to end on a CPU at small sizes, its correctness gate, and its wiring into
``python -m benchmarks --linear``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.bench_linear import Method, check

REPO = Path(__file__).resolve().parent.parent
ROW_KEYS = {"method", "mode", "N", "D", "V", "dtype", "ms", "tflops", "vs_gemms", "peak_extra_bytes"}


def _run(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")  # the CPU path, on any box
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=300
    )


def test_small_run_writes_every_method_and_mode(tmp_path):
    run = _run(
        "benchmarks.bench_linear",
        "--shapes",
        "96x16x700,64x8x300",
        "--workspaces-mib",
        "1",
        "--output-dir",
        str(tmp_path),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = tmp_path.glob("linear-cpu-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert {(r["method"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("gemms", "materialised", "fused_1MiB") for mode in ("fwd", "bwd", "fwd+bwd")
    }
    for row in rows:
        assert row.keys() >= ROW_KEYS and row["dtype"] == "bf16"
        assert row["ms"] > 0 and row["tflops"] > 0 and row["peak_extra_bytes"] > 0
        gemms = next(r for r in rows if r["method"] == "gemms" and r["mode"] == row["mode"] and r["N"] == row["N"])
        assert abs(row["vs_gemms"] - row["ms"] / gemms["ms"]) < 1e-9
    assert "verl: skipped" in run.stdout and "liger: skipped" in run.stdout


def test_fused_op_allocates_less_than_the_materialised_logits(tmp_path):
    run = _run(
        "benchmarks.bench_linear",
        "--shapes",
        "256x16x4096",
        "--workspaces-mib",
        "1",
        "--modes",
        "fwd+bwd",
        "--output-dir",
        str(tmp_path),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["method"]: r for r in json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]}
    logits = 256 * 4096 * 2
    assert rows["materialised"]["peak_extra_bytes"] >= 2 * logits  # the logits and their gradient
    assert rows["fused_1MiB"]["peak_extra_bytes"] < logits


def test_correctness_gate_refuses_a_wrong_method():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(80, 8, generator=g).bfloat16(), torch.randn(50, 8, generator=g).bfloat16()
    y = torch.randint(0, 50, (80,), generator=g)
    import aer_kernels as ak

    right = Method("right", ak.linear_logprobs_and_entropy)
    off_by_one = Method("wrong", lambda h_, w_, y_: ak.linear_logprobs_and_entropy(h_, w_, (y_ + 1) % 50))
    assert check(right, h, w, y) is None
    assert "out0: error" in check(off_by_one, h, w, y)


def test_wired_into_the_benchmarks_cli(tmp_path):
    run = _run("benchmarks", "--linear", "--budget-s", "0", "--output-dir", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "time budget of 0 s spent: 256x64x4096 and later shapes not measured" in run.stdout
    assert list((tmp_path / "linear").glob("linear-cpu-*.json"))
