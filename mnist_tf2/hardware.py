"""What this machine's CPU is, and whether it computes bfloat16 natively.

bfloat16 halves the bytes moved, but only pays on a CPU with bfloat16 matrix
units: Intel AMX (`amx_bf16`), AVX-512 BF16 (`avx512_bf16`, Intel Cooper Lake
and later, AMD Zen 4 and later) or Arm's BF16 extension (`bf16`). Elsewhere
oneDNN converts to float32 and back around every product, which is slower than
float32 alone. Read from /proc/cpuinfo (Linux); elsewhere nothing is known and
float32 is assumed.
"""

import functools
import os

# /proc/cpuinfo flag -> the name of the bfloat16 units it announces, best first.
BF16_UNITS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "Arm BF16"}
# The flags a benchmark report names: what the float32 and bfloat16 kernels can use.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                  "amx_bf16", "asimd", "sve", "bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo(path="/proc/cpuinfo") -> tuple[str, frozenset[str]]:
  """(model name, flags) of the first CPU in `path`; ("", {}) if unreadable."""
  model, flags = "", frozenset()
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model Name") and not model:
          model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / Arm
          flags = frozenset(value.split())
  except OSError:
    pass
  return model, flags


def cpu_model(path="/proc/cpuinfo") -> str:
  """The CPU's model name, e.g. "AMD EPYC" ("" if unknown)."""
  return _cpuinfo(path)[0]


def cpu_flags(path="/proc/cpuinfo") -> list[str]:
  """Those of REPORTED_FLAGS the CPU has, in that order."""
  flags = _cpuinfo(path)[1]
  return [flag for flag in REPORTED_FLAGS if flag in flags]


def bf16_units(path="/proc/cpuinfo") -> str:
  """The CPU's bfloat16 units ("AMX", "AVX512-BF16", "Arm BF16"), or "" if it has none."""
  flags = _cpuinfo(path)[1]
  return next((name for flag, name in BF16_UNITS.items() if flag in flags), "")


def enable_onednn() -> None:
  """Asks TensorFlow for its oneDNN kernels, unless TF_ENABLE_ONEDNN_OPTS is set.

  TensorFlow turns them on by default only on CPUs with AVX-512 VNNI or newer
  (TensorFlow RFC 400). Elsewhere, e.g. on AVX2-only CPUs, it runs the cnn's
  convolutions with Eigen at about half the speed (docs/PERFORMANCE.md). Takes
  effect only before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 in the
  environment keeps them off.
  """
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def onednn_enabled() -> bool | None:
  """Whether TensorFlow runs its oneDNN kernels (mnist_tf2/__init__.py turns them on).

  None if this TensorFlow cannot say (the answer comes from a private module).
  Imports TensorFlow.
  """
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return None
