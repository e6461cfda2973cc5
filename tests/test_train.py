"""End to end: every model trains on fake data; a short real run learns."""

import json
import os
import re

import pytest
import tensorflow as tf

from conftest import read_events, run_module
from mnist_tf2 import config as config_lib
from mnist_tf2 import loop
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2.errors import UserError
from mnist_tf2.metrics import Metrics

EVAL_LINE = re.compile(r"^  Num examples: (\d+)  Num correct: (\d+)  Precision @ 1: (\d\.\d{4})$")


@pytest.mark.parametrize("model", ["softmax", "mlp", "cnn"])
def test_end_to_end_on_fake_data(model, tmp_path, capsys):
  config = config_lib.resolve(model, "smoke", {"workdir": str(tmp_path)})
  results = loop.train_and_evaluate(config)
  out = capsys.readouterr().out

  assert results["steps"] == config.max_steps
  step_lines = re.findall(r"^Step (\d+): loss = \d+\.\d\d \(\d+\.\d+ sec\)$", out, re.M)
  assert [int(s) for s in step_lines] == list(
      range(config.log_every, config.max_steps + 1, config.log_every))
  for title in ("Training", "Validation", "Test"):
    assert f"\n{title} Data Eval:\n" in f"\n{out}"
  eval_lines = [EVAL_LINE.match(line) for line in out.splitlines() if "Num examples" in line]
  assert all(eval_lines) and len(eval_lines) == 3
  assert int(eval_lines[0].group(1)) == config.fake_examples

  # Checkpoints at every checkpoint_every and at the end, readable, at the right step.
  latest = tf.train.latest_checkpoint(tmp_path / "checkpoints")
  assert latest.endswith(f"ckpt-{config.max_steps}")
  variables = dict(tf.train.list_variables(latest))
  assert "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE" in variables
  assert tf.train.load_variable(latest, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == (
      config.max_steps)

  # Summaries read back from the event files.
  train_tags = read_events(tmp_path / "train")
  assert {"loss", "accuracy", "learning_rate", "examples_per_sec"} <= set(train_tags)
  assert [step for step, _, _ in train_tags["loss"]] == list(
      range(config.log_every, config.max_steps + 1, config.log_every))
  for split in ("train", "validation", "test"):
    tags = read_events(tmp_path / "eval" / split)
    assert {"loss", "accuracy"} <= set(tags)
    assert tags["accuracy"][-1][0] == config.max_steps

  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == config.max_steps and saved["config"]["model"] == model
  assert set(saved["metrics"]) == {"train", "validation", "test"}
  assert saved["metrics"]["test"]["num_examples"] == config.fake_examples // 4
  assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()


def test_rerun_of_finished_run_resumes_and_only_evaluates(tmp_path, capsys):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path)})
  first = loop.train_and_evaluate(config)
  capsys.readouterr()
  saved = (tmp_path / "results.json").read_text()
  second = loop.train_and_evaluate(config)
  out = capsys.readouterr().out
  assert f"Resumed from {tmp_path}/checkpoints/ckpt-{config.max_steps}" in out
  assert "Step " not in out
  assert second["metrics"] == first["metrics"]
  # The results (and wall time) of the run that trained are kept.
  assert (tmp_path / "results.json").read_text() == saved


def test_logged_loss_is_the_mean_over_the_whole_log_window(tmp_path, monkeypatch):
  """With chunks shorter than --log_every, the logged loss covers every step."""
  chunks = []
  original = trainer_lib.Trainer.__init__

  def recording_init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    train = self.train

    def recorded(iterator, num_steps):
      out = train(iterator, num_steps)
      chunks.append((int(out["steps"]), Metrics().update(out).loss))
      return out
    self.train = recorded

  monkeypatch.setattr(trainer_lib.Trainer, "__init__", recording_init)
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                    "steps_per_loop": 2, "log_every": 10})
  loop.train_and_evaluate(config)
  logged = {step: value for step, _, value in read_events(tmp_path / "train")["loss"]}
  assert [steps for steps, _ in chunks] == [2] * 10
  first_window = sum(steps * loss for steps, loss in chunks[:5]) / 10
  assert abs(float(logged[10]) - first_window) < 1e-5
  assert abs(float(logged[10]) - chunks[4][1]) > 1e-3  # Not just the last chunk's.


def test_export_dir_holding_the_workdir_is_refused_before_training(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path / "run"),
                                                    "export_dir": str(tmp_path)})
  with pytest.raises(UserError, match="holds --workdir"):
    loop.train_and_evaluate(config)
  assert not (tmp_path / "run").exists()


def test_resume_refuses_another_model(tmp_path):
  loop.train_and_evaluate(config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path)}))
  with pytest.raises(Exception, match="holds a run with model='softmax'.*use a new --workdir"):
    loop.train_and_evaluate(config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path)}))
  assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-20")


def test_short_real_data_run_learns(tmp_path):
  """Softmax regression on the bundled MNIST: > 85% test in 300 steps."""
  result = run_module("mnist_tf2.train", "--model=softmax", "--preset=seed", "--max_steps=300",
                      f"--workdir={tmp_path}", timeout=240)
  assert result.returncode == 0, result.stderr
  test_block = result.stdout.split("Test Data Eval:")[1]
  match = EVAL_LINE.match(test_block.splitlines()[1])
  assert int(match.group(1)) == 10000
  assert float(match.group(3)) > 0.85
  assert "Step 300: loss = " in result.stdout


class _Stream:
  def __init__(self, tty):
    self.tty, self.text = tty, ""

  def isatty(self):
    return self.tty

  def write(self, text):
    self.text += text

  def flush(self):
    pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(tty):
  stream = _Stream(tty)
  bar = loop.progress_bar(200, 0, stream=stream)
  bar.update(100)
  bar.clear()
  if tty:
    assert re.search(r"\b50%.* 100/200 ", stream.text), stream.text
    assert stream.text.endswith("\r")
  else:
    assert stream.text == ""


@pytest.mark.parametrize("step, expected", [
    (0, 5),      # steps_per_loop
    (8, 10),     # the next log/checkpoint boundary
    (10, 15),
    (18, 20),    # max_steps
])
def test_next_stop_cuts_chunks_at_every_boundary(step, expected):
  config = config_lib.resolve("softmax", "smoke", {"eval_every": 15})
  assert (config.steps_per_loop, config.log_every, config.max_steps) == (5, 10, 20)
  assert loop.next_stop(step, config) == expected


def test_eval_splits_limits_the_final_evaluation(tmp_path, capsys):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                   "eval_splits": "validation,test"})
  results = loop.train_and_evaluate(config)
  out = capsys.readouterr().out
  assert set(results["metrics"]) == {"validation", "test"}
  assert "Training Data Eval:" not in out and "Test Data Eval:" in out
