"""Shared test helpers."""

import glob
import os
import subprocess
import sys

import pytest

# Before any test module imports TensorFlow: the package turns TensorFlow's oneDNN
# kernels on, as it does for every command (mnist_tf2/__init__.py).
import mnist_tf2  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(run_dir):
  """Returns {tag: [(step, kind, value)]} from the event files in `run_dir`.

  `kind` is the summary plugin name ("scalars", "images", ...) and `value` the
  decoded tensor as numpy.
  """
  import tensorflow as tf
  from tensorflow.core.util import event_pb2
  tags = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        kind = value.metadata.plugin_data.plugin_name
        tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
        tags.setdefault(value.tag, []).append((event.step, kind, tensor))
  return tags


def run_module(module, *args, timeout=300, env=None, cwd=None):
  """Runs `python -m module args...` in a subprocess; returns CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
  # The bundled-data verification stamp goes to a per-session cache, not ~/.cache.
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
