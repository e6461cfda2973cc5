"""scripts/reproduce.py: presets x seeds as real training processes, one table."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from mnist_tf2.errors import UserError

SCRIPT = os.path.join(REPO, "scripts", "reproduce.py")


@pytest.fixture(scope="module")
def reproduce():
  spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_script(*args, cwd):
  # From another directory: the script must find the checkout's package itself.
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=300, cwd=cwd)


def test_plan_skips_presets_a_model_lacks_and_refuses_bad_input(reproduce):
  assert reproduce.plan(["softmax", "cnn"], ["smoke", "seed_sgd"], ["0", "1"]) == [
      ("softmax", "smoke", 0, False), ("softmax", "smoke", 1, False),
      ("cnn", "smoke", 0, False), ("cnn", "smoke", 1, False),
      ("cnn", "seed_sgd", 0, False), ("cnn", "seed_sgd", 1, False)]
  # Each precision is a row of its own: its seeds follow one another.
  assert reproduce.plan(["mlp"], ["seed"], ["0", "1"], ["mixed", "float32"]) == [
      ("mlp", "seed", 0, False), ("mlp", "seed", 1, False),
      ("mlp", "seed", 0, True), ("mlp", "seed", 1, True)]
  with pytest.raises(UserError, match=r"--precisions takes float32 and/or mixed \(--mixed_"
                     r"precision: bfloat16 on a CPU, float16 on a GPU\), got bfloat16"):
    reproduce.plan(["mlp"], ["seed"], ["0"], ["bfloat16"])
  with pytest.raises(UserError, match="got nothing"):
    reproduce.plan(["mlp"], ["seed"], ["0"], [])
  with pytest.raises(UserError, match="no chosen model has --presets=seed_sgd"):
    reproduce.plan(["softmax"], ["seed_sgd"], ["0"])
  with pytest.raises(UserError, match="--seeds must be integers"):
    reproduce.plan(["softmax"], ["seed"], ["zero"])
  with pytest.raises(UserError, match="unknown --model='lenet'"):
    reproduce.plan(["lenet"], ["seed"], ["0"])


def test_mean_and_sample_std_per_model_and_preset(reproduce):
  def results(model, seed, validation, test, seconds):
    return {"model": model, "preset": "p", "steps": 10, "wall_seconds": seconds,
            "config": {"seed": seed, "batch_size": 5},
            "metrics": {"validation": {"accuracy": validation},
                        "test": {"accuracy": test, "num_examples": 100}}}

  rows = reproduce.summarize([results("mlp", 0, 0.90, 0.91, 10.0),
                              results("cnn", 0, 0.99, 0.98, 7.0),
                              results("mlp", 1, 0.92, 0.95, 14.0)])
  assert [(row["model"], row["seeds"]) for row in rows] == [("mlp", [0, 1]), ("cnn", [0])]
  assert rows[0]["validation"] == pytest.approx((0.91, 0.0141421356))
  assert rows[0]["test"] == pytest.approx((0.93, 0.0282842712))
  assert rows[0]["wall_seconds"] == pytest.approx((12.0, 2.8284271247))
  assert rows[1]["test"] == (0.98, None)
  machine = dict(date="2000-01-01", cpu="cpu", cores=2, tensorflow="2.x", load_before=0.5,
                 load_after=1.5, trained=2, reused=1)
  table = reproduce.markdown(rows, machine)
  assert ("| mlp | `p` | float32 | 10 × 5 | 2 | 12 ± 3 | 91.00% ± 1.41 | 93.00% ± 2.83 |  |"
          in table)
  assert "| cnn | `p` | float32 | 10 × 5 | 1 | 7 | 99.00% | 98.00% |  |" in table
  # The published column: the tutorial's figure beside a `seed` preset.
  rows[0]["preset"] = "seed"
  assert "| 93.00% ± 2.83 | tutorial ~90% |" in reproduce.markdown(rows, machine)


def test_runs_in_another_precision_are_a_row_of_their_own(reproduce):
  def results(seed, accuracy, mixed, policy=None):
    return {"model": "cnn", "preset": "best", "steps": 10, "wall_seconds": 5.0,
            "config": {"seed": seed, "batch_size": 5, "mixed_precision": mixed},
            "metrics": {"validation": {"accuracy": accuracy},
                        "test": {"accuracy": accuracy, "num_examples": 100}},
            **({"dtype_policy": policy} if policy else {})}

  # A run from before results.json recorded its policy groups with the runs of its
  # flags and takes their recorded precision.
  runs = [results(0, 0.99, False), results(0, 0.97, True),
          results(1, 0.98, True, "mixed_bfloat16"), results(1, 0.98, False, "float32")]
  rows = reproduce.summarize(runs)
  # Each run (results.json's runs, the curves' legend) says what its row says.
  assert reproduce.run_precisions(runs) == ["float32", "bfloat16", "bfloat16", "float32"]
  assert [(row["precision"], row["seeds"]) for row in rows] == [("float32", [0, 1]),
                                                                ("bfloat16", [0, 1])]
  assert rows[1]["test"][0] == pytest.approx(0.975)
  assert reproduce.precision_of([results(0, 0.9, True)]) == "--mixed_precision"
  table = reproduce.markdown(rows, dict(date="2000-01-01", cpu="cpu", cores=2, tensorflow="2.x",
                                        load_before=0.5, load_after=1.5, trained=0, reused=4))
  assert "| cnn | `best` | bfloat16 | 10 × 5 | 2 |" in table
  assert reproduce.workdir_of("out", "cnn", "best", 3, mixed_precision=True) == os.path.join(
      "out", "cnn-best-mixed-seed3")


def test_both_precisions_in_one_call_one_table(tmp_path):
  output_dir = tmp_path / "out"
  args = ["--models=softmax", "--presets=smoke", "--seeds=0", "--precisions=float32,mixed",
          f"--output_dir={output_dir}"]
  first = run_script(*args, cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  assert "softmax smoke mixed seed 0: python -m mnist_tf2.train" in first.stdout
  policies = [json.loads((output_dir / name / "results.json").read_text())["dtype_policy"]
              for name in ("softmax-smoke-seed0", "softmax-smoke-mixed-seed0")]
  assert policies == ["float32", "mixed_bfloat16"]
  for precision in ("float32", "bfloat16"):
    assert f"| softmax | `smoke` | {precision} | 20 × 32 | 1 |" in first.stdout
  summary = json.loads((output_dir / "results.json").read_text())
  assert [(run["precision"], os.path.basename(run["workdir"])) for run in summary["runs"]] == [
      ("float32", "softmax-smoke-seed0"), ("bfloat16", "softmax-smoke-mixed-seed0")]
  # Both reused into one table by a later call.
  again = run_script(*args, "--reuse_only", cwd=tmp_path)
  assert again.returncode == 0 and again.stdout.count("reusing") == 2, again.stderr
  assert again.stdout.count("| softmax | `smoke` |") == 2


def test_smoke_presets_two_seeds_table_json_and_reuse(tmp_path):
  output_dir = tmp_path / "out"
  args = ["--models=softmax", "--presets=smoke", "--seeds=0,1", f"--output_dir={output_dir}"]
  first = run_script(*args, cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  # Each run's command, ready to paste.
  assert "softmax smoke seed 0: python -m mnist_tf2.train --model=softmax --preset=smoke" \
      in first.stdout
  runs = [json.loads((output_dir / f"softmax-smoke-seed{seed}" / "results.json").read_text())
          for seed in (0, 1)]
  assert [run["config"]["seed"] for run in runs] == [0, 1]
  assert set(runs[0]["metrics"]) == {"validation", "test"}  # Only what the table reports.
  summary = json.loads((output_dir / "results.json").read_text())
  row, = summary["rows"]
  assert (row["model"], row["preset"], row["seeds"], row["steps"]) == ("softmax", "smoke",
                                                                      [0, 1], [20])
  for split in ("validation", "test"):
    accuracies = [run["metrics"][split]["accuracy"] for run in runs]
    assert row[split][0] == pytest.approx(sum(accuracies) / 2)
  assert [run["seed"] for run in summary["runs"]] == [0, 1]
  table = (output_dir / "results.md").read_text()
  assert "| softmax | `smoke` | float32 | 20 × 32 | 2 |" in table
  assert "| fake data (" in table  # Not to be read as MNIST figures.
  assert table in first.stdout
  assert "2 run(s) trained in this call" in table and "0 reused" in table

  # A second call reuses the finished runs instead of training again; it draws the plots.
  again = run_script(*args, "--plots", cwd=tmp_path)
  assert again.returncode == 0, again.stderr
  # Fake data reaches 0 errors: drawn at half an error, not dropped with a warning.
  assert "no positive values" not in again.stderr, again.stderr
  assert again.stdout.count("reusing") == 2
  # Reading the runs' events loads TensorFlow: without its C++ start-up notices.
  for noise in ("cuInit", "cuda drivers", "oneDNN custom operations"):
    assert noise not in again.stderr, again.stderr
  for name in ("frontier.png", "validation_curves.png"):
    assert f"Wrote {output_dir / name}" in again.stdout
    with Image.open(output_dir / name) as image:
      assert image.format == "PNG" and image.width >= 400
  assert "0 run(s) trained in this call" in again.stdout and "2 reused" in again.stdout
  assert json.loads((output_dir / "results.json").read_text())["rows"][0]["test"] == row["test"]

  # --reuse_only trains nothing: seed 2 has no run and is skipped. A run saved before a
  # field existed (missing from its config.json), or with other reporting cadences, counts.
  config_path = output_dir / "softmax-smoke-seed0" / "config.json"
  config = json.loads(config_path.read_text())
  del config["cluster_timeout"]
  config_path.write_text(json.dumps(dict(config, eval_every=7, log_every=7)))
  only = run_script("--models=softmax", "--presets=smoke", "--seeds=0,1,2", "--reuse_only",
                    "--eval_every=5", f"--output_dir={output_dir}", cwd=tmp_path)
  assert only.returncode == 0, only.stderr
  # Another --eval_every does not retrain a finished run, and says so.
  assert ("softmax smoke seed 0: reusing " in only.stdout and "(evaluated every 7 steps, "
          "not every 5: its curve keeps those points; another --output_dir trains the run "
          "anew)" in only.stdout), only.stdout
  assert "softmax smoke seed 2: no finished run" in only.stdout
  assert not (output_dir / "softmax-smoke-seed2").exists()
  assert "| softmax | `smoke` | float32 | 20 × 32 | 2 |" in only.stdout
  none = run_script("--models=mlp", "--presets=smoke", "--seeds=0", "--reuse_only",
                    f"--output_dir={output_dir}", cwd=tmp_path)
  assert none.returncode == 2 and "no finished run in" in none.stderr

  # A workdir left by another config is refused, not resumed or overwritten.
  config_path = output_dir / "softmax-smoke-seed1" / "config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps(dict(config, max_steps=40)))
  refused = run_script(*args, cwd=tmp_path)
  assert refused.returncode == 2
  assert ("softmax-smoke-seed1 holds a run of another config (max_steps 40 in the run, 20 "
          "now; was the preset or the run's config.json edited?)") in refused.stderr, \
      refused.stderr
  assert json.loads(config_path.read_text())["max_steps"] == 40


def test_validation_curve_reads_every_evaluation_from_the_events(reproduce, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(tmp_path / "eval" / "validation"))
  with writer.as_default():
    for step, accuracy in ((300, 0.97), (100, 0.9), (200, 0.95)):
      tf.summary.scalar("accuracy", accuracy, step=step)
      tf.summary.scalar("loss", 1 - accuracy, step=step)
  writer.close()
  curve = reproduce.validation_curve(str(tmp_path))
  assert [step for step, _ in curve] == [100, 200, 300]
  assert [accuracy for _, accuracy in curve] == pytest.approx([0.9, 0.95, 0.97])
  assert reproduce.validation_curve(str(tmp_path / "no_such_run")) == []
