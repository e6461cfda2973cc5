"""scripts/time_to_accuracy.py on the cnn `fast` preset's first steps (tiny fake data)."""

import json
import os

from conftest import run_module


def test_fast_preset_first_steps_are_timed(tmp_path):
  output = tmp_path / "tta.json"
  temp = tmp_path / "temp"  # where the run's workdir goes (tempfile follows TMPDIR)
  temp.mkdir()
  result = run_module(
      "scripts.time_to_accuracy", "--model=cnn", "--presets=fast", "--seeds=3",
      "--targets=0,1.01", f"--output={output}",
      "--extra_flags=--data_source=fake,--fake_examples=256,--max_steps=2,--warmup_steps=1",
      timeout=300, env={"TMPDIR": str(temp)})
  assert result.returncode == 0, result.stderr
  assert os.listdir(temp) == []  # the run's workdir is removed
  results = json.loads(output.read_text())
  (run,) = results["presets"]["fast"]["runs"]
  assert run["seed"] == 3
  # The fast preset evaluates the test split only, once, at the end of the process.
  ((seconds, accuracy),) = run["test_timeline"]
  assert 0 < seconds <= run["wall_seconds"] and 0 <= accuracy <= 1
  assert run["cpu_seconds"] > 0
  # The run says which precision it computed in, and why.
  assert "dtype policy" in run["precision_line"]
  assert "--auto_mixed_precision" in run["precision_line"]
  summary = results["presets"]["fast"]["summary"]
  assert summary["0"]["median_seconds"] == seconds  # any accuracy reaches 0
  assert summary["1.01"] == {"seconds_per_seed": [None], "median_seconds": None}
  assert "cnn fast: time to 101.0% test: not reached by every seed" in result.stdout


def test_a_failed_run_is_one_error_line_quoting_the_run(tmp_path):
  temp = tmp_path / "temp"
  temp.mkdir()
  result = run_module("scripts.time_to_accuracy", "--model=softmax", "--seeds=0",
                      "--extra_flags=--max_step=10", timeout=120, env={"TMPDIR": str(temp)})
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith("error: softmax fast seed 0 failed (exit status 2): Unknown command "
                         "line flag 'max_step'. Did you mean: max_steps ?"), line
  assert "--max_step=10" in line  # the command, to rerun by hand
  assert os.listdir(temp) == []

  kept = run_module("scripts.time_to_accuracy", "--model=softmax", "--seeds=0",
                    "--extra_flags=--max_step=10", "--keep_workdirs", timeout=120,
                    env={"TMPDIR": str(temp)})
  (workdir,) = os.listdir(temp)
  assert workdir.startswith("tta-softmax-fast-0-")
  assert kept.stderr.strip().endswith(f"(its workdir is kept: {temp / workdir})")
