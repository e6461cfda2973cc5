"""Ensembles of trained runs (evaluate and export several workdirs), and the accuracy presets.

Two mlp runs and one softmax run train briefly on fake data for the whole module;
the ensemble's figures are checked against the members' own probabilities.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_module
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import ensemble
from mnist_tf2 import evaluate
from mnist_tf2 import export
from mnist_tf2 import loop
from mnist_tf2 import models
from mnist_tf2 import restore
from mnist_tf2 import workdir as workdir_lib
from mnist_tf2.errors import UserError


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  base = tmp_path_factory.mktemp("members")
  workdirs = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
    # Different models and seeds, so the members disagree on some examples.
    for model, seed in (("mlp", 0), ("mlp", 1), ("softmax", 0)):
      config = config_lib.resolve(model, "smoke", {
          "seed": seed, "max_steps": 10, "workdir": str(base / f"{model}-{seed}"),
          "eval_splits": "test", "summaries": False})
      loop.train_and_evaluate(config)
      workdirs.append(config.workdir)
    splits = datasets.load_splits(config)
  return types.SimpleNamespace(workdirs=workdirs, splits=splits, base=base)


def _probabilities(workdir, images):
  model = restore.restore_model(workdir).model
  return tf.nn.softmax(model(datasets.normalize(images), training=False)).numpy()


def test_ensemble_counts_every_example_once_and_averages_probabilities(members, capsys):
  test = members.splits.test
  results = evaluate.evaluate_ensemble(members.workdirs, ["test"])["test"]

  each = np.stack([_probabilities(workdir, test.images) for workdir in members.workdirs])
  mean = each.mean(axis=0)
  model = models.Ensemble([restore.restore_model(w).model for w in members.workdirs])
  logits = model(datasets.normalize(test.images)).numpy()
  np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), mean, atol=1e-6, rtol=0)

  for metrics, probabilities in zip([results["ensemble"], *results["members"]],
                                    [mean, *each]):
    assert metrics["num_examples"] == len(test.labels)
    assert np.sum(metrics["confusion_matrix"]) == len(test.labels)
    predictions = probabilities.argmax(-1)
    assert metrics["num_correct"] == int(np.sum(predictions == test.labels))
    expected = np.zeros([10, 10], np.int64)
    np.add.at(expected, (test.labels, predictions), 1)
    np.testing.assert_array_equal(metrics["confusion_matrix"], expected)
  # The members disagree somewhere: this checks an average, not one model thrice.
  assert len({tuple(p.argmax(-1)) for p in each}) > 1

  out = capsys.readouterr().out
  assert "Evaluating an ensemble of 3 models" in out
  assert re.search(r"Ensemble of 3: Test Data Eval:\n  Num examples: (\d+)  Num correct: "
                   rf"{results['ensemble']['num_correct']}  Precision @ 1: [\d.]+", out)
  for number, metrics in enumerate(results["members"], 1):
    assert (f"Member {number}: Test Data Eval:\n  Num examples: {len(test.labels)}  "
            f"Num correct: {metrics['num_correct']}  ") in out


def test_five_members_evaluate_without_tensorflow_warnings(members, tmp_path):
  # Five members are six evaluators, each traced per split: TensorFlow's "excessive
  # retracing" warning must not reach the user.
  workdirs = list(members.workdirs)
  for number in (1, 2):
    copy = tmp_path / f"copy{number}"
    shutil.copytree(members.workdirs[number - 1], copy)
    workdirs.append(str(copy))
  result = run_module("mnist_tf2.evaluate", f"--workdir={','.join(workdirs)}",
                      "--splits=validation,test",
                      env={"XDG_CACHE_HOME": str(members.base / "cache")})
  assert result.returncode == 0, result.stderr
  assert "Ensemble of 5: Test Data Eval:" in result.stdout
  assert "retracing" not in result.stderr and "W1" not in result.stderr, result.stderr


def test_ensemble_saved_model_answers_saved_model_cli(members, tmp_path):
  export_dir = str(tmp_path / "ensemble")
  export.export_ensemble(members.workdirs, export_dir)
  images = members.splits.test.images[:6]
  mean = np.mean([_probabilities(w, images) for w in members.workdirs], axis=0)

  serve = tf.saved_model.load(export_dir).signatures["serving_uint8"]
  outputs = serve(images=tf.constant(images))
  np.testing.assert_allclose(outputs["probabilities"].numpy(), mean, atol=1e-6, rtol=0)
  np.testing.assert_array_equal(outputs["classes"].numpy(), mean.argmax(-1))

  # `run` loads through the TF1 session loader, as TensorFlow Serving does.
  np.save(tmp_path / "images.npy", images)
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  run = subprocess.run([cli, "run", "--dir", export_dir, "--tag_set", "serve",
                        "--signature_def", "serving_uint8",
                        "--inputs", f"images={tmp_path / 'images.npy'}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  classes = re.search(r"Result for output key classes:\n\[([\d ]+)\]", run.stdout).group(1)
  assert [int(c) for c in classes.split()] == mean.argmax(-1).tolist()


def test_export_command_names_the_ensemble_signatures(members, tmp_path):
  export_dir = tmp_path / "ensemble"
  result = run_module("mnist_tf2.export", f"--workdir={','.join(members.workdirs[:2])}",
                      f"--export_dir={export_dir}", timeout=180)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("Exported the ensemble of 2 models (")
  # The same contract as one model's export, said the same way.
  assert result.stdout.endswith(f"to {export_dir} (signatures serving_default: float32 pixels "
                                "in [0, 1]; serving_uint8: uint8 0-255)\n"), result.stdout


def _copy_with_config(workdir, destination, **changes):
  shutil.copytree(workdir, destination)
  path = os.path.join(destination, "config.json")
  with open(path) as f:
    saved = json.load(f)
  with open(path, "w") as f:
    json.dump({**saved, **changes}, f)
  return str(destination)


def test_a_member_trained_on_other_data_is_refused(members, tmp_path):
  first = members.workdirs[0]
  other_fake = _copy_with_config(first, tmp_path / "other_fake", fake_examples=999)
  bundled = _copy_with_config(first, tmp_path / "bundled", data_source="bundled")
  with pytest.raises(UserError, match=r"ensemble members must share the data: .*/mlp-0 has "
                     r"fake_examples=256, .*/other_fake has fake_examples=999$"):
    evaluate.evaluate_ensemble([first, other_fake])
  # Each member shows its own source's fields: the bundled one has no fake_examples.
  with pytest.raises(UserError, match=r"has data_source='fake', fake_examples=256, "
                     r".*/bundled has data_source='bundled'$") as raised:
    export.export_ensemble([first, bundled], str(tmp_path / "never"))
  assert "None" not in str(raised.value)
  assert not os.path.exists(tmp_path / "never")

  result = run_module("mnist_tf2.evaluate", f"--workdir={first},{bundled}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: ensemble members must share the data: ")
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text, expected", [("a", ["a"]), ("a, b,", ["a", "b"])])
def test_parse_workdirs(text, expected):
  assert ensemble.parse_workdirs(text) == expected


@pytest.mark.parametrize("text, message", [(" , ", "--workdir is empty"),
                                           ("a,b,a", "names a more than once")])
def test_parse_workdirs_refuses(text, message):
  with pytest.raises(UserError, match=message):
    ensemble.parse_workdirs(text)


@pytest.mark.parametrize("model, preset", [("cnn", "best"), ("mlp", "best")])
def test_accuracy_presets_load_and_run_their_first_steps(model, preset, tmp_path):
  config = config_lib.resolve(model, preset, {
      "data_source": "fake", "fake_examples": 64, "batch_size": 16, "max_steps": 2,
      "warmup_steps": 1,  # The preset's would outlast these 2 steps.
      "steps_per_loop": 1, "log_every": 1, "checkpoint_every": 2, "eval_every": 0,
      "eval_splits": "test", "eval_batch_size": 16, "summaries": False,
      "workdir": str(tmp_path)})
  assert config.augment
  assert (config.augment_elastic_alpha > 0) == (model == "cnn")  # Elastic: the cnn's only.
  results = loop.train_and_evaluate(config)
  assert results["steps"] == 2
  assert np.isfinite(results["metrics"]["test"]["loss"])


def test_an_ensemble_is_refused_for_litert_in_one_line(members, tmp_path):
  result = run_module("mnist_tf2.export", f"--workdir={','.join(members.workdirs[:2])}",
                      f"--export_dir={tmp_path / 'e'}", "--format=litert")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: an ensemble (several --workdir) exports as a SavedModel only; leave out "
      "--format=litert"]
  assert not (tmp_path / "e").exists()


def test_the_same_run_under_two_spellings_is_refused(members, tmp_path):
  link = tmp_path / "link"
  link.symlink_to(members.workdirs[0])
  for other in (members.workdirs[0] + "/", str(link)):
    with pytest.raises(UserError, match="--workdir names the same run twice"):
      ensemble.check_directories([members.workdirs[0], other])


def test_average_checkpoints_evaluates_the_mean_weights(tmp_path):
  config = config_lib.resolve("mlp", "smoke", {
      "max_steps": 6, "checkpoint_every": 2, "max_to_keep": 3,
      "workdir": str(tmp_path / "mlp"), "eval_splits": "test", "summaries": False})
  loop.train_and_evaluate(config)
  workdir = config.workdir
  result = run_module("scripts.average_checkpoints", f"--workdir={workdir}", "--splits=test")
  assert result.returncode == 0, result.stderr
  paths = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  paths = list(paths.all_model_checkpoint_paths)[::-1]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == len(paths) == 3
  # Each line: the accuracy of the mean weights of the newest k checkpoints, as computed
  # here from the checkpoints themselves.
  model = models.create_model(workdir_lib.load_config(workdir))
  checkpoint = tf.train.Checkpoint(model=model)
  weights = []
  for path in paths:
    checkpoint.restore(path).expect_partial()
    weights.append([v.numpy() for v in model.weights])
  test = datasets.load_splits(config).test
  images, labels = test.images, test.labels
  for count, line in enumerate(lines, start=1):
    for variable, *values in zip(model.weights, *weights[:count]):
      variable.assign(np.mean(values, axis=0))
    predictions = np.argmax(model(datasets.normalize(images), training=False), -1)
    correct = int(np.sum(predictions == labels))
    steps = ", ".join(path.rsplit("-", 1)[-1] for path in paths[:count])
    assert line == f"mean of step(s) {steps}: test {correct}/{len(labels)}"


def test_average_checkpoints_refuses_a_workdir_without_checkpoints(tmp_path):
  result = run_module("scripts.average_checkpoints", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


def test_ensemble_errors_counts_who_misses_what(members):
  """scripts/ensemble_errors.py against the members' probabilities computed here."""
  result = run_module("scripts.ensemble_errors", f"--workdir={','.join(members.workdirs)}",
                       "--splits=validation,test")
  assert result.returncode == 0, result.stderr
  for name in ("validation", "test"):
    split = getattr(members.splits, name)
    each = np.stack([_probabilities(w, split.images) for w in members.workdirs])
    wrong = each.argmax(-1) != split.labels
    ensemble_wrong = each.mean(0).argmax(-1) != split.labels
    assert f"{name}: {len(split.labels)} examples" in result.stdout
    for number, errors in enumerate(wrong.sum(1), 1):
      assert f"  member {number} ({members.workdirs[number - 1]}): {errors} errors" \
          in result.stdout
    assert (f"  missed by at least one member: {wrong.any(0).sum()}; by every member: "
            f"{wrong.all(0).sum()}; by the ensemble: {ensemble_wrong.sum()}") in result.stdout
    breakdown = result.stdout.split(f"{name}: ", 1)[1].split(
        "the ensemble's errors, missed by how many members: ", 1)[1].splitlines()[0]
    expected = [f"{(wrong.sum(0)[ensemble_wrong] == k).sum()} by {'all ' if k == 3 else ''}"
                f"{k} member{'s' if k != 1 else ''}"
                for k in range(4) if (wrong.sum(0)[ensemble_wrong] == k).any()]
    assert breakdown == (", ".join(expected) or "none")
  # The members disagree somewhere, or the test shows nothing.
  assert "missed by at least one member: 0;" not in result.stdout


def test_ensemble_errors_refuses_members_of_other_data(members, tmp_path):
  other = tmp_path / "other"
  config = config_lib.resolve("softmax", "smoke", {
      "max_steps": 2, "fake_examples": 64, "workdir": str(other), "eval_splits": "test",
      "summaries": False})
  loop.train_and_evaluate(config)
  result = run_module("scripts.ensemble_errors", f"--workdir={members.workdirs[0]},{other}")
  assert result.returncode == 2
  line, = result.stderr.strip().splitlines()
  assert line.startswith(f"error: ensemble members must share the data: {members.workdirs[0]} "
                         "has fake_examples=") and line.endswith(f"{other} has fake_examples=64")
