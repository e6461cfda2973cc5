"""scripts/benchmark.py runs end to end and writes every figure (speeds are not asserted)."""

import json
import math

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
