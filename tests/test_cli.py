"""The first things a user tries: other run lengths, --help, a clean first screen.

Each test is a kind of fault a new user met (issue 12): a preset value they
never saw conflicting with their flag; --help listing nothing useful; a first
screen of JSON and TensorFlow's start-up lines.
"""

import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_module
from mnist_tf2 import cli
from mnist_tf2 import config as config_lib
from mnist_tf2.errors import UserError

MODELS = config_lib.FIELDS["model"].metadata["choices"]
COMMANDS = ("train", "evaluate", "export", "predict")


# --- 1. A preset value the user never saw never conflicts with their flag --------------------


def _every_preset():
  return [(model, preset) for model in MODELS for preset in config_lib.load_presets(model)]


@pytest.mark.parametrize("max_steps", [1, 5, 100])
@pytest.mark.parametrize("model, preset", _every_preset())
def test_every_preset_takes_any_run_length(model, preset, max_steps):
  from mnist_tf2 import optimizers  # pylint: disable=g-import-not-at-top
  resolved = config_lib.resolve_with_sources(model, preset,
                                             {"max_steps": max_steps, "fake_data": True})
  config, original = resolved.config, config_lib.resolve(model, preset)
  assert config.max_steps == max_steps
  assert config.warmup_steps < max_steps or config.warmup_steps == 0
  for name in config_lib.RUN_LENGTH_FIELDS:
    if getattr(config, name) != getattr(original, name):
      # Said in one line, naming the field and both values.
      [note] = resolved.notes
      assert f"{name} {getattr(original, name)} -> {getattr(config, name)}" in note
  schedule = optimizers.create_schedule(config)
  rates = [float(schedule(step)) for step in range(max_steps)]
  assert all(math.isfinite(rate) and rate >= 0 for rate in rates)
  assert max(rates) > 0  # The run learns something.


def test_a_short_run_of_the_mlp_default_trains(tmp_path):
  """`--model=mlp --max_steps=50` of the issue, on tiny fake data, in-process.

  (The cnn's `--fake_data --max_steps=5` runs in test_a_run_prints_only_its_own_lines.)
  """
  from mnist_tf2 import loop  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve("mlp", "default", {
      "fake_data": True, "max_steps": 50, "fake_examples": 128, "eval_batch_size": 128,
      "eval_splits": "test", "summaries": False, "workdir": str(tmp_path)})
  assert config.warmup_steps == 1
  assert loop.train_and_evaluate(config)["steps"] == 50


def test_scaled_warmup_keeps_the_preset_fraction():
  resolved = config_lib.resolve_with_sources("cnn", "default", {"max_steps": 100})
  assert resolved.config.warmup_steps == round(200 * 100 / 6000)
  assert resolved.sources["warmup_steps"] == "preset cnn/default, scaled to --max_steps=100"
  longer = config_lib.resolve("cnn", "default", {"max_steps": 12000})
  assert longer.warmup_steps == 400
  # Given on the command line, a value is never scaled.
  assert config_lib.resolve("cnn", "default", {"max_steps": 100,
                                               "warmup_steps": 50}).warmup_steps == 50


@pytest.mark.parametrize("model, preset, overrides, message", [
    # Both values from the command line: refused, naming both and where they came from.
    ("cnn", "default", {"warmup_steps": 200, "max_steps": 100},
     "--warmup_steps=200 (command line) must be below --max_steps=100 (command line)"),
    # A flag asking for more than the preset's run: named with the preset.
    ("cnn", "fast", {"warmup_steps": 800},
     "--warmup_steps=800 (command line) must be below --max_steps=700 (preset cnn/fast)"),
    ("mlp", "smoke", {"profile_steps": "100,110"},
     "--profile_steps=100,110 (command line) ends after --max_steps=20 (preset mlp/smoke)"),
    ("cnn", "seed", {"augment_shift": 3.0},
     "--augment_shift has no effect without --augment (--augment=False (built-in default))"),
    ("mlp", "default", {"momentum": 0.5},
     "--momentum applies to --optimizer=momentum only, not --optimizer=adam "
     "(preset mlp/default)"),
])
def test_contradictions_name_both_flags_and_their_sources(model, preset, overrides, message):
  with pytest.raises(UserError) as excinfo:
    config_lib.resolve(model, preset, overrides)
  assert str(excinfo.value) == message or str(excinfo.value).startswith(message)


def test_a_preset_setting_gives_way_to_a_flag(monkeypatch):
  """A cnn preset with XLA and --deterministic: the flag wins, and the run says so."""
  presets = {"xla": dict(jit_compile=True, max_steps=10)}
  monkeypatch.setattr(config_lib, "load_presets", lambda model: presets)
  resolved = config_lib.resolve_with_sources("cnn", "xla", {"deterministic": True})
  assert resolved.config.deterministic and not resolved.config.jit_compile
  [note] = resolved.notes
  assert note.startswith("--deterministic (command line) turns off --jit_compile=True "
                         "(preset cnn/xla)")
  with pytest.raises(UserError, match=r"--deterministic=True \(command line\) and "
                     r"--jit_compile=True \(command line\) cannot be combined"):
    config_lib.resolve("cnn", "xla", {"deterministic": True, "jit_compile": True})


# --- 2. --help lists the command's own flags, without TensorFlow ------------------------------


def _help(command, flag="--help"):
  """Runs `command --help` in a fresh interpreter; reports whether TensorFlow got imported."""
  probe = (f"import runpy, sys; sys.argv = ['{command}', '{flag}']\n"
           "try:\n"
           f"  runpy.run_module('mnist_tf2.{command}', run_name='__main__')\n"
           "finally:\n"
           "  sys.stderr.write('imported tensorflow: %s' % ('tensorflow' in sys.modules))\n")
  return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                        cwd=REPO, timeout=60)


@pytest.mark.parametrize("command, own_flags", [
    ("evaluate", ["--workdir", "--train_dir", "--splits", "--tf_logs"]),
    ("export", ["--workdir", "--train_dir", "--export_dir", "--overwrite", "--tf_logs"]),
    ("predict", ["--export_dir", "--json", "--top_k", "--tf_logs"]),
])
def test_help_lists_the_commands_own_flags(command, own_flags):
  result = _help(command)
  assert result.returncode == 0, result.stderr
  assert result.stderr == "imported tensorflow: False"
  for flag in own_flags:
    assert f"\n  {flag}  " in result.stdout, flag
  assert "--helpfull" in result.stdout
  assert "--flagfile" not in result.stdout  # absl's own flags only with --helpfull.


def test_train_help_lists_every_config_field_by_group_and_the_presets():
  result = _help("train")
  assert result.returncode == 0, result.stderr
  assert result.stderr == "imported tensorflow: False"
  out = result.stdout
  positions = [out.index(f"\n  --{name}  (default: ") for name in config_lib.FIELDS]
  assert positions == sorted(positions)  # In Config's order, hence grouped as in Config.
  groups = list(dict.fromkeys(f.metadata["group"] for f in config_lib.FIELDS.values()))
  assert [out.index(f"\n{group}:\n") for group in groups] == sorted(
      out.index(f"\n{group}:\n") for group in groups)
  assert "  --max_steps  (default: 2000)" in out
  for model, preset in _every_preset():
    assert f"  {model}/{preset}: " in out
  assert "--tf_logs" in out and "--train_dir" in out


def test_every_script_answers_help_quietly_with_exit_0():
  # The peers' scripts import torch / JAX, optional extras the suite does not install.
  scripts = sorted(name for name in os.listdir(os.path.join(REPO, "scripts"))
                   if name.endswith(".py") and not name.startswith("peer_"))
  assert "reproduce.py" in scripts and "benchmark.py" in scripts
  processes = {name: subprocess.Popen(
      [sys.executable, os.path.join(REPO, "scripts", name), "--help"], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in scripts}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, (name, stderr)
    assert stderr == "", (name, stderr)
    assert "--" in stdout, name  # It lists its flags.


def test_helpfull_keeps_absls_flags():
  result = _help("evaluate", "--helpfull")
  assert "--flagfile" in result.stdout and "--splits" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--workdir=/nowhere", "extra"], "error: unexpected argument(s): extra"),
    (["export", "--overwrite=maybe"], "error: flag --overwrite=maybe: "),
    (["train", "--max_steps=ten"], "error: flag --max_steps=ten: "),
    (["train", "--model=cnn", "--max_steps=100", "--warmup_steps=200"],
     "error: --warmup_steps=200 (command line) must be below --max_steps=100 (command line)"),
])
def test_bad_command_lines_are_one_error_line_and_exit_2(args, message):
  result = run_module(f"mnist_tf2.{args[0]}", *args[1:], timeout=60)
  assert result.returncode == 2
  assert result.stderr.startswith(message), result.stderr
  assert result.stderr.count("\n") == 1 and result.stdout == ""


@pytest.mark.parametrize("command, args, message", [
    ("evaluate", ["--workdir=/nowhere"], "error: --workdir=/nowhere is not a directory"),
    ("evaluate", ["--workdir=/tmp,/nowhere"], "error: --workdir=/nowhere is not a directory"),
    ("export", ["--workdir=/nowhere", "--export_dir=/nowhere-e"],
     "error: --workdir=/nowhere is not a directory"),
    ("predict", ["--export_dir=/nowhere", "a.png"],
     "error: --export_dir=/nowhere holds no SavedModel"),
])
def test_a_wrong_path_is_refused_before_tensorflow_loads(command, args, message):
  # A typo'd path must answer at once, not after TensorFlow's seconds of start-up.
  probe = (f"import runpy, sys; sys.argv = {[command, *args]!r}\n"
           "try:\n"
           f"  runpy.run_module('mnist_tf2.{command}', run_name='__main__')\n"
           "finally:\n"
           "  sys.stderr.write('imported tensorflow: %s' % ('tensorflow' in sys.modules))\n")
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
  assert result.returncode == 2
  assert result.stderr.startswith(message), result.stderr
  assert result.stderr.endswith("imported tensorflow: False"), result.stderr


# --- 3. A clean first screen -----------------------------------------------------------------


def test_start_up_notices_are_dropped_and_other_lines_kept(capfd):
  lines = [
      "WARNING: All log messages before absl::InitializeLog() is called are written to "
      "STDERR\n",
      "I0000 00:00:1.2 6327 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
      "GPU will not be used.\n",
      "E0000 00:00:1.3 6327 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
      "Failed call to cuInit: UNKNOWN ERROR (303)\n",
      "I0000 00:00:1.4 6327 port.cc:153] oneDNN custom operations are on. You may see ...\n",
      "E0000 00:00:1.5 6327 something_else.cc:1] a real problem\n",
      "a Python warning from an import\n",
  ]
  with cli._captured_stderr() as captured:  # pylint: disable=protected-access
    for line in lines:
      os.write(2, line.encode())
  assert captured() == lines
  cli._write_back(captured())  # pylint: disable=protected-access
  assert capfd.readouterr().err == "".join(lines[-2:])


def test_a_run_prints_only_its_own_lines(tmp_path):
  """The tutorial's quick check: summary first, no JSON, no TensorFlow line.

  --deterministic made tf.data rewrite the evaluation pipeline and TensorFlow
  log `E0000 ... NodeDef mentions attribute use_unbounded_threadpool`.
  """
  result = run_module("mnist_tf2.train", "--model=cnn", "--fake_data", "--max_steps=5",
                      "--deterministic", "--fake_examples=128", "--eval_splits=test",
                      f"--workdir={tmp_path}", timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == ""
  lines = result.stdout.splitlines()
  assert lines[:3] == [
      f"Training cnn, preset default, in {tmp_path} (full config: config.json there)",
      "Your flags: --fake_data, --fake_examples=128 (instead of 512), --max_steps=5 "
      "(instead of 6000), --eval_splits=test (instead of train,validation,test), "
      "--deterministic",
      "Scaled with --max_steps=5 (the preset runs 6000): warmup_steps 200 -> 0, "
      "eval_every 1000 -> 0 (only at the end)"]
  assert not [line for line in lines if line.strip().startswith(("{", '"'))]
  assert "Test Data Eval:" in result.stdout
  assert (tmp_path / "config.json").is_file()


# --- 7. The README's commands print what it says ----------------------------------------------


def _readme_run_lines(command):
  """The summary lines `train` prints first for a README command line (no TensorFlow)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mnist_tf2 import train  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train", *command.split()[3:]])
  return train.summary(config_lib.resolve_flags(flag_values)).splitlines()


@pytest.mark.parametrize("command", [
    "python -m mnist_tf2.train --model=mlp",
    "python -m mnist_tf2.train --model=mlp --preset=seed --learning_rate=0.05 --train_dir=/tmp/mlp",
])
def test_readme_commands_print_what_the_readme_shows(command):
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  assert f"\n{command}\n" in readme
  for line in _readme_run_lines(command):
    assert f"\n{line}\n" in readme, line


def test_tf_logs_flag_or_tensorflows_own_level_shows_its_lines(monkeypatch):
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  assert not cli.tf_logs_wanted() or cli.FLAGS["tf_logs"].value
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
  assert cli.tf_logs_wanted()
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # Quieter, as cli sets it itself.
  assert not cli.tf_logs_wanted() or cli.FLAGS["tf_logs"].value
