"""scripts/anchor_examples.py runs each example for an epoch on a few images (speed is not asserted)."""

import json
import math

import pytest

from conftest import run_module

KEYS = ("example", "source", "epochs", "epochs_run", "seed", "target", "time_to_target_seconds",
        "target_epoch", "timeline", "wall_seconds", "cpu_seconds", "start_measured_from",
        "seconds_at_training_start", "versions", "train_examples", "test_examples", "cpu_model",
        "cpu_count", "environment", "environment_given", "load_average_1_5_15")


def run_example(example, tmp_path):
  output = tmp_path / f"{example}.json"
  # 512 training and 1,000 test images keep each run to seconds on a busy 2-core machine.
  result = run_module("scripts.anchor_examples", f"--example={example}", "--epochs=1",
                      "--stop_at=0", "--train_examples=512", "--test_examples=1000",
                      f"--output={output}", timeout=120)
  assert result.returncode == 0, result.stderr
  return json.loads(output.read_text()), result.stdout


def check(results, stdout, example):
  for key in KEYS:
    assert key in results, key
  assert results["example"] == example and results["epochs_run"] == 1
  (epoch,) = results["timeline"]
  assert epoch["epoch"] == 1
  accuracy = epoch["test_accuracy"]
  assert isinstance(accuracy, float) and 0 <= accuracy <= 1
  assert math.isfinite(epoch["test_loss"])
  assert 0 < epoch["seconds_since_start"] <= results["wall_seconds"]
  assert results["test_examples"] == 1000
  assert f"epoch 1: test accuracy {accuracy:.4f}, " in stdout
  # One epoch on 512 images does not reach 99%; the run says so instead of a time.
  assert results["time_to_target_seconds"] is None
  assert "time to 99.0% test: not reached in 1 epochs" in stdout


def test_torch_example(tmp_path):
  pytest.importorskip("torch")  # optional (the `peers` extra); CI does not install it
  results, stdout = run_example("torch", tmp_path)
  check(results, stdout, "torch")
  assert results["train_examples"] == 512
  assert results["environment"]["OMP_WAIT_POLICY"]  # set unless the caller did
  assert "torch" in results["versions"]


def test_keras_example(tmp_path):
  results, stdout = run_example("keras", tmp_path)
  check(results, stdout, "keras")
  # fit's validation_split=0.1 holds out the last tenth of the 512.
  assert (results["train_examples"], results["validation_examples"]) == (461, 51)
  assert set(results["timeline"][0]["fit_logs"]) >= {"loss", "accuracy", "val_accuracy"}
  assert results["environment"]["TF_ENABLE_ONEDNN_OPTS"]


def test_missing_torch_is_one_line_and_status_1(tmp_path):
  # A torch module that fails to import, ahead of any installed one on the path.
  (tmp_path / "torch.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
  result = run_module("scripts.anchor_examples", "--example=torch", timeout=60,
                      env={"PYTHONPATH": str(tmp_path)})
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "anchor_examples: --example=torch needs PyTorch, which is not installed "
      "(No module named 'torch')."]
