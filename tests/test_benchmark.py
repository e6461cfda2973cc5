"""scripts/benchmark.py runs end to end and writes every figure (speeds are not asserted)."""

import json
import math

import pytest

from conftest import run_module

KEYS = ("batch_size", "train_images_per_sec", "keras_fit_images_per_sec", "speedup_vs_fit",
        "input_pipeline_images_per_sec", "eval_images_per_sec", "matmul_gflops",
        "train_flops_per_image", "roofline_fraction", "peak_rss_mb",
        "train_jit_compile_images_per_sec", "train_mixed_precision_images_per_sec",
        "kernel_floor_images_per_sec", "kernel_floor_roofline_fraction")


def test_tiny_benchmark_writes_every_key(tmp_path):
  output = tmp_path / "bench.json"
  result = run_module("scripts.benchmark", "--model=softmax", "--tiny", f"--output={output}",
                      timeout=120)
  assert result.returncode == 0, result.stderr
  results = json.loads(output.read_text())
  for key in KEYS:
    assert isinstance(results[key], (int, float)) and math.isfinite(results[key]), key
    assert results[key] > 0, key
  # Softmax regression: 784 x 10 multiply-adds forward, x2 FLOPs, x3 for training.
  assert results["train_flops_per_image"] == 3 * 2 * 784 * 10
  assert "speed-up vs fit" in result.stdout


def test_profile_step_lists_the_ops_of_a_step():
  result = run_module("scripts.profile_step", "--model=softmax", "--steps=5", "--top=5",
                      timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("softmax, batch 100: ") and "ms/step" in lines[0]
  ops = lines[1:]
  assert 1 <= len(ops) <= 5
  # The forward matmul of the single dense layer is among the costliest ops.
  assert any("MatMul" in line and "logits" in line for line in ops), ops


PEER_KEYS = ("variant", "images_per_sec", "ours_images_per_sec", "ours_over_peer",
             "search_images_per_sec", "rounds_images_per_sec", "ours_over_peer_rounds")


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
  """One tiny benchmark with both peers asked for (each installed one runs a few steps)."""
  output = tmp_path_factory.mktemp("peers") / "bench.json"
  result = run_module("scripts.benchmark", "--model=softmax", "--tiny", "--peers=torch,jax",
                      "--nokeras_fit", "--noextra_rows", f"--output={output}", timeout=300)
  assert result.returncode == 0, result.stderr
  return json.loads(output.read_text()), result.stdout


def test_tiny_benchmark_with_peers_has_our_rows(peers_run):
  results, stdout = peers_run
  for key in ("train_images_per_sec", "train_mixed_precision_images_per_sec"):
    assert results[key] > 0 and math.isfinite(results[key]), key
  assert "keras_fit_images_per_sec" not in results  # --nokeras_fit
  machine = results["machine_before"]
  assert machine["cpu_flags"] == [f for f in machine["cpu_flags"] if f]
  assert machine["bf16_units"] in ("none", "AMX", "AVX512-BF16", "Arm BF16")
  # Each peer asked for is measured or noted as missing, never both, never silently dropped.
  assert set(results["peers"]) | set(results["peers_missing"]) == {"torch", "jax"}
  assert not set(results["peers"]) & set(results["peers_missing"])
  for name, note in results["peers_missing"].items():
    assert f"peer {name}: not installed" in note and note in stdout


@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_tiny_benchmark_runs_each_installed_peer(peer, peers_run):
  results, stdout = peers_run
  if peer in results["peers_missing"]:  # The peers are optional; CI does not install them.
    pytest.skip(results["peers_missing"][peer])
  figures = results["peers"][peer]
  assert peer in figures["version"]
  for precision in ("float32", "bfloat16"):
    row = figures[precision]
    for key in PEER_KEYS:
      assert key in row, (precision, key)
    for key in ("images_per_sec", "ours_images_per_sec", "ours_over_peer"):
      assert row[key] > 0 and math.isfinite(row[key]), (precision, key)
    assert row["variant"] in row["search_images_per_sec"]
    assert f"{peer} {precision} (best: {row['variant']})" in stdout

