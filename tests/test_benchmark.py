"""scripts/benchmark.py runs end to end and writes every figure (speeds are not asserted)."""

import json
import math
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
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
  # Tiny figures are said not to be speeds.
  assert result.stdout.splitlines()[-1].startswith("note: --tiny times a few steps")
  # The setting labelled best is the faster of the two figures printed.
  other = ("train_no_jit_images_per_sec" if results["train_jit_compile"]
           else "train_jit_compile_images_per_sec")
  assert results["train_images_per_sec"] >= results[other]
  best = re.search(r"our loop, fp32 \(best: jit_compile=(\w+)\) +([\d,]+) images/s",
                   result.stdout)
  shown = re.search(r"our loop, jit_compile=(\w+) +([\d,]+) images/s", result.stdout)
  assert best.group(1) != shown.group(1)
  assert int(best.group(2).replace(",", "")) >= int(shown.group(2).replace(",", ""))
  # The input pipeline's ratio as precise as the JSON's, to a tenth.
  ratio = re.search(r"\((\d+\.\d)x training\)", result.stdout).group(1)
  assert ratio == f"{results['input_pipeline_vs_train']:.1f}"
  # No TensorFlow start-up notices, no warning about fit's shuffle argument.
  for noise in ("cuInit", "cuda drivers", "oneDNN custom operations", "shuffle=True"):
    assert noise not in result.stderr, noise


def test_benchmark_help_is_quiet():
  result = run_module("scripts.benchmark", "--help", timeout=120)
  assert result.returncode == 0, result.stderr
  assert "--tiny  (default: False)" in result.stdout
  assert "A few steps on fake data" in result.stdout
  assert result.stderr == ""


def test_benchmark_refuses_an_unknown_peer_in_one_line():
  result = run_module("scripts.benchmark", "--peers=mxnet", "--tiny", timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: --peers/--precisions: unknown mxnet; known: torch, jax, float32, bfloat16"]


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


def test_torch_peer_takes_read_only_arrays_without_a_warning():
  pytest.importorskip("torch")  # the peers are optional (pip install -e '.[peers]')
  # In a process of its own: torch stays out of the test process.
  code = textwrap.dedent("""
      import warnings
      import numpy as np
      from mnist_tf2 import config as config_lib
      from scripts import peer_torch
      config = config_lib.resolve("softmax", "default", {"batch_size": 8})
      images = np.zeros((16, 28, 28, 1), np.uint8)
      labels = np.arange(16, dtype=np.int32) % 10
      images.flags.writeable = labels.flags.writeable = False  # as read from the data files
      warnings.simplefilter("error")  # "The given NumPy array is not writable" would raise
      print(peer_torch.trainer(config, images, labels)(2))
      """)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert math.isfinite(float(result.stdout))


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

