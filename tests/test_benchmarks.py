"""The benchmark CLIs end to end on a CPU: ``--quick`` into a temporary folder, then ``--readme-table``;
the standalone vocab-parallel benchmark at a tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VP = "vocab_parallel_logprobs_and_entropy"
ROW_KEYS = {"op", "mode", "method", "N", "V", "dtype", "ms", "gbps", "pct_copy", "peak_extra_bytes"}
TOP_KEYS = {"device", "torch", "triton", "commit", "date", "copy_gbps", "rows"}


def _run_cpu(command: list[str], timeout: float, **env_vars) -> subprocess.CompletedProcess:
    """``command`` in the repository on the CPU path, on any box."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", **env_vars)
    return subprocess.run(command, cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=timeout)


def _run(module: str, *args) -> subprocess.CompletedProcess:
    return _run_cpu([sys.executable, "-m", module, *args], timeout=120)


def _cli(*args, out: Path) -> subprocess.CompletedProcess:
    return _run("benchmarks", *args, "--output-dir", str(out))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = _cli("--quick", out=out)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run.stdout


def test_quick_run_writes_results_json(quick_run):
    out, stdout = quick_run
    (path,) = out.glob("cpu-*.json")
    doc = json.loads(path.read_text())
    assert doc.keys() >= TOP_KEYS
    assert doc["device"] == "cpu" and doc["copy_gbps"] > 0
    assert path.name == f"cpu-{doc['date']}.json"
    rows = doc["rows"]
    assert {r["op"] for r in rows} == {"entropy", "logprobs_and_entropy", VP}
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    assert {"aer_kernels", "eager_bf16", "eager_fp32", "chunked"} <= {r["method"] for r in rows}
    assert len({r["N"] for r in rows}) >= 2
    for row in rows:
        assert row.keys() >= ROW_KEYS
        assert row["dtype"] == "bf16" and row["peak_extra_bytes"] is None
        assert row["ms"] > 0 and row["gbps"] > 0 and row["pct_copy"] > 0
    assert "kernel figures need a GPU" in stdout
    assert "trl: skipped" in stdout and "liger_ce: skipped" in stdout


def test_quick_run_times_vocab_parallel_beside_the_single_gpu_op(quick_run):
    out, stdout = quick_run
    (path,) = out.glob("cpu-*.json")
    rows = json.loads(path.read_text())["rows"]
    vp = {(r["N"], r["V"], r["mode"]) for r in rows if r["op"] == VP}
    single = {
        (r["N"], r["V"], r["mode"]) for r in rows if r["op"] == "logprobs_and_entropy" and r["method"] == "aer_kernels"
    }
    assert {r["method"] for r in rows if r["op"] == VP} == {"aer_kernels"}
    assert vp == single and len({n for n, _, _ in vp}) >= 2
    assert f"aer_kernels fwd+bwd: {VP} costs" in stdout


def test_standalone_vocab_parallel_benchmark():
    run = _run("benchmarks.bench_vocab_parallel", "--rows", "16", "--vocab", "300")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line.split() for line in run.stdout.splitlines()]
    vp = [line for line in lines if line[:1] == [VP]]
    assert [line[2] for line in vp] == ["fwd", "fwd+bwd"]
    assert all(float(line[-1]) > 0 for line in vp)  # the ratio to the single-GPU op


def test_quick_run_writes_png(quick_run):
    out, _ = quick_run
    (png,) = out.glob("cpu-*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_table_names_the_card(quick_run):
    out, _ = quick_run
    run = _cli("--readme-table", out=out)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "**cpu**" in lines[0]
    header = next(line for line in lines if line.startswith("| op |"))
    assert "aer_kernels" in header and "eager_fp32" in header
    assert any(line.startswith("| entropy | fwd | 64 x 1000 |") for line in lines)


def test_readme_table_without_results_fails_clearly(tmp_path):
    run = _cli("--readme-table", out=tmp_path)
    assert run.returncode == 1 and "no results file" in run.stderr


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    """The script a lent GPU runs, every step at CPU sizes: each step's results land, none fails."""
    run = _run_cpu(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"], timeout=300, OUT=str(tmp_path), PYTHON=sys.executable
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    for failure in ("FAILED", "failed (exit", "stopped (exit", "no results file"):
        assert failure not in log, log[-3000:]
    for pattern, key in [
        ("sweep-cpu-*.json", "results"),
        ("cpu-*.json", "rows"),
        ("linear/linear-cpu-*.json", "rows"),
        ("combine/combine-cpu-*.json", "rows"),
    ]:
        (path,) = tmp_path.glob(pattern)
        assert json.loads(path.read_text())[key], pattern
    combine = json.loads(next(tmp_path.glob("combine/*.json")).read_text())["rows"]
    assert {r["method"] for r in combine} == {"torch", "torch_compile"} and combine[0]["eager_ops"] > 0


def test_pytest_benchmark_suites_pass_on_cpu():
    """``pytest benchmarks/``: every case's correctness check passes at the CPU shapes (timing disabled)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks", "--benchmark-disable"]
    run = _run_cpu(command, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
