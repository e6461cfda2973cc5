"""Where a training step's time goes: per-op milliseconds from a profiler trace.

  python scripts/profile_step.py --model=cnn [--steps=30] [--top=25]

Runs our compiled loop (tf.data input, as `train` runs it without
--jit_compile) for a few steps under `tf.profiler`, then sums the host-side
duration of every TensorFlow op in the trace and prints milliseconds per
step, largest first. Ops run one at a time (inter-op parallelism 1), so the
durations add up to the step time instead of overlapping; the throughput
printed next to it is with and without that setting's trace.
"""

import collections
import glob
import os
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,g-bad-import-order
from mnist_tf2 import cli
# TensorFlow as the package's commands load it: oneDNN on, no C++ start-up notices.
tf = cli.import_tensorflow()
# The profiler's trace format; not a public API, but shipped with TensorFlow.
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import trainer as trainer_lib

flags.DEFINE_enum("model", "cnn", ["softmax", "mlp", "cnn"], "Model to profile.")
flags.DEFINE_integer("batch_size", 100, "Batch size.")
flags.DEFINE_integer("steps", 30, "Profiled steps.")
flags.DEFINE_integer("top", 25, "Ops to list.")
FLAGS = flags.FLAGS


def op_milliseconds(logdir) -> collections.Counter:
  """Total duration (ms) of each op in the trace, keyed by 'layer/op:Type' names."""
  path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    if "/host:CPU" not in plane.name:
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ":" in name and "/" in name:  # TensorFlow ops are "node/name:OpType".
          totals[name] += event.duration_ps / 1e9
        elif name == "CpuExecutable::ExecuteAsyncOnStream":
          # An XLA program: in this loop, the fused optimizer update.
          totals["XLA program (the optimizer update):XLA"] += event.duration_ps / 1e9
  return totals


def main(argv):
  del argv
  tf.config.threading.set_inter_op_parallelism_threads(1)
  config = config_lib.resolve(FLAGS.model, "default", {
      "batch_size": FLAGS.batch_size, "augment": False, "jit_compile": False,
      "summaries": False, "workdir": tempfile.mkdtemp()})
  split = datasets.load_splits(config).train
  model, optimizer = trainer_lib.build_model_and_optimizer(config)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(), model, optimizer)
  iterator = iter(datasets.train_dataset(split, batch_size=config.batch_size, seed=0))
  steps = tf.constant(FLAGS.steps, tf.int64)

  def timed():
    start = time.perf_counter()
    trainer.train(iterator, steps)["steps"].numpy()
    return (time.perf_counter() - start) / FLAGS.steps * 1e3

  timed()  # Trace and warm up.
  plain_ms = timed()
  logdir = tempfile.mkdtemp()
  tf.profiler.experimental.start(logdir)
  profiled_ms = timed()
  tf.profiler.experimental.stop()
  totals = op_milliseconds(logdir)
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}: {plain_ms:.2f} ms/step "
        f"({FLAGS.batch_size / plain_ms * 1e3:,.0f} images/s); profiled {profiled_ms:.2f} "
        f"ms/step; the ops below sum to {sum(totals.values()) / FLAGS.steps:.2f} ms/step")
  for name, ms in totals.most_common(FLAGS.top):
    node, op_type = name.rsplit(":", 1)
    # Drop the loop's scopes: "while/body/_1/gradient_tape/while/cnn_1/conv2_1/..." ->
    # "gradient_tape/cnn_1/conv2_1/...".
    node = node.replace("while/body/_1/", "").replace("while/", "")
    print(f"  {ms / FLAGS.steps:7.2f} ms  {op_type:40s} {node}")


if __name__ == "__main__":
  cli.run_script(main, __doc__)
