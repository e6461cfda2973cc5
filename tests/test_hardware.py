"""CPU detection (hardware.py) and the precision --auto_mixed_precision picks from it."""

import os
import subprocess
import sys

import pytest

from mnist_tf2 import config as config_lib
from mnist_tf2 import distribute
from mnist_tf2 import hardware

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trimmed from /proc/cpuinfo of the machines named.
CPUINFO = {
    "AMX": ("Intel(R) Xeon(R) Platinum 8481C", "fpu avx2 fma avx512f avx512_bf16 amx_bf16 "
            "amx_tile avx512_vnni"),
    "AVX512-BF16": ("AMD EPYC 9B14", "fpu avx2 fma avx512f avx512_vnni avx512_bf16"),
    "": ("AMD EPYC", "fpu sse2 avx avx2 fma vaes"),
}


def write_cpuinfo(tmp_path, model, flags):
  # Two CPUs, as the kernel lists them; only the first is read.
  path = tmp_path / "cpuinfo"
  block = f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
  path.write_text(block + block.replace(": 0", ": 1"))
  return str(path)


@pytest.mark.parametrize("units", sorted(CPUINFO))
def test_bf16_units_from_cpuinfo(units, tmp_path):
  model, flags = CPUINFO[units]
  path = write_cpuinfo(tmp_path, model, flags)
  assert hardware.bf16_units(path) == units
  assert hardware.cpu_model(path) == model
  assert set(hardware.cpu_flags(path)) <= set(flags.split())
  assert "avx2" in hardware.cpu_flags(path) and "fpu" not in hardware.cpu_flags(path)


def test_arm_and_unreadable_cpuinfo(tmp_path):
  arm = tmp_path / "arm"
  arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd40\n")
  assert hardware.bf16_units(str(arm)) == "Arm BF16"
  assert hardware.bf16_units(str(tmp_path / "missing")) == ""
  assert hardware.cpu_model(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("units, policy, note", [
    ("AMX", "mixed_bfloat16", "(--auto_mixed_precision: bfloat16 units AMX)"),
    ("", "float32", "(--auto_mixed_precision: this CPU has no bfloat16 units)"),
])
def test_auto_mixed_precision_follows_the_cpu(units, policy, note, monkeypatch):
  monkeypatch.setattr(hardware, "bf16_units", lambda path="": units)
  config = config_lib.resolve("softmax", "smoke", {"auto_mixed_precision": True})
  assert distribute.precision_policy(config) == policy
  assert distribute.precision_note(config).strip() == note
  # Asked for explicitly, bfloat16 runs on any CPU; neither flag: float32, no note.
  explicit = config.replace(mixed_precision=True)
  assert distribute.precision_policy(explicit) == "mixed_bfloat16"
  assert distribute.precision_note(explicit) == ""
  plain = config.replace(auto_mixed_precision=False)
  assert distribute.precision_policy(plain) == "float32"
  assert distribute.precision_note(plain) == ""


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False"), ("1", "True")])
def test_onednn_is_on_unless_the_environment_turns_it_off(setting, expected):
  """TensorFlow leaves oneDNN off on CPUs without AVX-512 VNNI; importing mnist_tf2 turns it on."""
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if setting is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = setting
  result = subprocess.run(
      [sys.executable, "-c", "import mnist_tf2\nfrom mnist_tf2 import hardware\n"
       "print(hardware.onednn_enabled())"],
      cwd=REPO, env=env, capture_output=True, text=True, check=True)
  assert result.stdout.split()[-1] == expected
