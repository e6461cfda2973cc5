"""Presets, flag overrides and the one-line refusals of bad input."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_module
from mnist_tf2 import config as config_lib
from mnist_tf2.errors import UserError


@pytest.mark.parametrize("model, preset, expected", [
    ("softmax", "seed", dict(optimizer="sgd", learning_rate=0.5, batch_size=100, max_steps=1000)),
    ("mlp", "seed", dict(optimizer="sgd", learning_rate=0.01, batch_size=100, max_steps=2000,
                         hidden1=128, hidden2=32)),
    ("cnn", "seed", dict(optimizer="adam", learning_rate=1e-4, batch_size=50, max_steps=20000,
                         dropout_rate=0.4)),
    ("cnn", "seed_sgd", dict(optimizer="sgd", learning_rate=1e-3, batch_size=100,
                             max_steps=20000)),
])
def test_seed_presets_are_the_tutorials(model, preset, expected):
  config = config_lib.resolve(model, preset)
  for name, value in expected.items():
    assert getattr(config, name) == value, name


@pytest.mark.parametrize("model", ["softmax", "mlp", "cnn"])
def test_every_preset_resolves(model):
  presets = config_lib.load_presets(model)
  assert {"seed", "default", "smoke"} <= set(presets)
  for preset in presets:
    assert config_lib.resolve(model, preset).preset == preset


def test_overrides_win_over_preset_and_types_are_checked():
  config = config_lib.resolve("mlp", "seed", {"learning_rate": 0.1, "hidden1": 64})
  assert (config.learning_rate, config.hidden1, config.max_steps) == (0.1, 64, 2000)
  assert config_lib.resolve("mlp", "seed", {"learning_rate": 1}).learning_rate == 1.0
  with pytest.raises(UserError, match="--batch_size must be int"):
    config_lib.resolve("mlp", "seed", {"batch_size": "ten"})


def test_profile_steps_parse():
  assert config_lib.profile_range("") is None
  assert config_lib.profile_range("100,110") == (100, 110)
  assert config_lib.resolve("mlp", "seed", {"profile_steps": "0,2000"}).profile_steps == "0,2000"


def test_fake_data_flag_selects_fake_source_and_workdir_defaults():
  config = config_lib.resolve("softmax", "seed", {"fake_data": True})
  assert config.data_source == "fake"
  assert config.workdir == "/tmp/mnist_tf2/softmax-seed"


@pytest.mark.parametrize("model, preset, overrides, message", [
    ("lenet", "default", {}, "unknown --model='lenet'"),
    ("cnn", "tuned", {}, "unknown --preset='tuned' for --model=cnn"),
    ("cnn", "default", {"hidden1": 64}, "--hidden1 applies to --model=mlp only"),
    ("softmax", "default", {"dropout_rate": 0.5}, "--dropout_rate applies to --model=cnn only"),
    ("mlp", "default", {"batch_size": 0}, "--batch_size must be positive, got 0"),
    ("mlp", "default", {"hidden2": -3}, "--hidden2 must be positive, got -3"),
    ("mlp", "default", {"max_steps": 0}, "--max_steps must be positive"),
    ("mlp", "default", {"learning_rate": -0.1}, "--learning_rate must be positive"),
    ("mlp", "default", {"optimizer": "lbfgs"}, "--optimizer='lbfgs' is not one of"),
    ("mlp", "default", {"data_source": "web"}, "--data_source='web' is not one of"),
    ("mlp", "default", {"max_to_keep": 1}, "--max_to_keep must be at least 2"),
    ("cnn", "default", {"dropout_rate": 1.0}, "--dropout_rate must be in [0, 1)"),
    ("mlp", "default", {"data_source": "idx"}, "--data_source=idx needs --data_dir"),
    ("mlp", "default", {"warmup_steps": 5000, "max_steps": 100}, "--warmup_steps=5000"),
    ("mlp", "default", {"nonsense": 1}, "unknown config field 'nonsense'"),
    ("mlp", "default", {"data_dir": "/d"}, "--data_dir applies to --data_source=idx only, "
     "not --data_source=bundled"),
    ("mlp", "default", {"dataset": "kmnist"}, "--dataset applies to --data_source=tfds only"),
    ("mlp", "default", {"fake_examples": 64}, "--fake_examples applies to --data_source=fake"),
    ("mlp", "default", {"fake_data": True, "data_source": "idx", "data_dir": "/d"},
     "--fake_data contradicts --data_source=idx"),
    ("mlp", "default", {"momentum": 0.5}, "--momentum applies to --optimizer=momentum only, "
     "not --optimizer=adam"),
    ("mlp", "default", {"summaries": False, "profile_steps": "10,20"},
     "--profile_steps needs summaries on"),
    ("mlp", "default", {"strategy": "horovod"}, "--strategy='horovod' is not one of"),
    ("mlp", "default", {"num_cpu_devices": -1}, "--num_cpu_devices must be >= 0"),
    ("mlp", "default", {"tpu": "grpc://10.0.0.2:8470"}, "applies to --strategy=tpu only"),
    ("cnn", "default", {"eval_splits": "test,dev"}, "--eval_splits='test,dev' must be"),
    ("cnn", "default", {"eval_splits": ""}, "--eval_splits='' must be"),
    ("cnn", "default", {"eval_splits": "test,test"}, "--eval_splits='test,test' must be"),
    ("mlp", "default", {"histogram_every": -1}, "--histogram_every must be >= 0, got -1"),
    ("mlp", "default", {"profile_steps": "100"}, "--profile_steps='100' must be two global"),
    ("mlp", "default", {"profile_steps": "1,2,3"}, "--profile_steps='1,2,3' must be two"),
    ("mlp", "default", {"profile_steps": "a,b"}, "--profile_steps='a,b' must be two"),
    ("mlp", "default", {"profile_steps": "20,10"}, "must be two global steps A,B with 0 <= A < B"),
    ("mlp", "default", {"profile_steps": "-1,10"}, "must be two global steps A,B with 0 <= A < B"),
    ("mlp", "seed", {"profile_steps": "100,2001"}, "--profile_steps=100,2001 (command line) "
     "ends after --max_steps=2000 (preset mlp/seed)"),
])
def test_invalid_config_is_refused_in_one_line(model, preset, overrides, message):
  with pytest.raises(UserError) as excinfo:
    config_lib.resolve(model, preset, overrides)
  assert message in str(excinfo.value)
  assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("args, message", [
    (["--model=cnn", "--hidden1=64"], "error: --hidden1 applies to --model=mlp only"),
    (["--model=mlp", "--batch_size=-1"], "error: --batch_size must be positive, got -1"),
    (["--model=mlp", "--preset=nope"], "error: unknown --preset='nope' for --model=mlp"),
])
def test_cli_refuses_bad_flags_with_one_line_and_exit_2(args, message, tmp_path):
  result = run_module("mnist_tf2.train", *args, f"--workdir={tmp_path}/w", timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == message or message in result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      result.stderr.strip().splitlines()[-1]]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()  # Refused before touching the workdir.


def test_cli_batch_larger_than_split_and_unwritable_workdir(tmp_path):
  result = run_module("mnist_tf2.train", "--model=softmax", "--preset=smoke",
                      "--batch_size=1000", f"--workdir={tmp_path}/w", timeout=120)
  assert result.returncode == 2, result.stderr
  assert "error: --batch_size=1000 is larger than the training split (256 examples)" in (
      result.stderr)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_module("mnist_tf2.train", "--model=softmax", "--preset=smoke",
                      f"--workdir={blocker}/w", timeout=120)
  assert result.returncode == 2
  assert f"error: cannot write to --workdir={blocker}/w" in result.stderr
  assert blocker.read_text() == "not a directory"


def test_flagfile_and_train_dir_alias(tmp_path):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text("--model=mlp\n--preset=seed\n--learning_rate=0.2\n")
  from absl import flags
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values([ "prog", f"--flagfile={flagfile}", f"--train_dir={tmp_path}/td"])
  config = config_lib.config_from_flags(flag_values)
  assert (config.model, config.preset, config.learning_rate) == ("mlp", "seed", 0.2)
  assert config.workdir == f"{tmp_path}/td"
  assert config.max_steps == 2000  # From the preset: not given on the command line.


def test_help_explains_every_flag():
  result = run_module("mnist_tf2.train", "--helpfull", timeout=60)
  for name, field in config_lib.FIELDS.items():
    shown = f"--[no]{name}:" if field.type is bool else f"--{name}:"
    assert shown in result.stdout, name
  assert "--train_dir" in result.stdout


def test_presets_load_from_an_installed_wheel(tmp_path):
  """configs/ ships inside the wheel as mnist_tf2.configs: no checkout needed."""
  wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(wheel_dir), REPO], capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr
  [wheel] = list(wheel_dir.glob("*.whl"))
  shutil.unpack_archive(str(wheel), str(target), format="zip")
  assert (target / "mnist_tf2" / "configs" / "cnn.py").is_file()
  assert (target / "mnist_tf2" / "data" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
  probe = ("from mnist_tf2 import config as c; import sys; "
           "print(c.configs_dir()); print(c.resolve('cnn', 'seed').learning_rate)")
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)),
                          timeout=60)
  assert result.returncode == 0, result.stderr
  configs_dir, learning_rate = result.stdout.split()
  assert configs_dir == str(target / "mnist_tf2" / "configs")
  assert float(learning_rate) == 1e-4
