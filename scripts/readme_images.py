"""Saves a run's TensorBoard pictures as PNG files (the README's docs/images/).

    python scripts/readme_images.py --workdir=/tmp/mnist_tf2/mlp-default --out=docs/images

Writes `<prefix><tag>.png` for each picture tag the run wrote (inputs,
confusion_matrix, misclassified, class_weights), its last step: the PNG bytes
exactly as TensorBoard shows them.
"""

import glob
import os

from absl import flags

from mnist_tf2 import cli

flags.DEFINE_string("workdir", "", "The training workdir whose summaries to read.")
flags.DEFINE_string("out", "docs/images", "Directory to write the PNG files to.")
flags.DEFINE_string("prefix", "", "Prefix of the file names, e.g. 'mlp_'.")
FLAGS = flags.FLAGS

TAGS = ("inputs", "confusion_matrix", "misclassified", "class_weights")


def last_images(workdir: str) -> dict[str, bytes]:
  """{tag: PNG bytes of its last step} over every run (subdirectory) of `workdir`."""
  tf = cli.import_tensorflow()
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  found = {}
  paths = glob.glob(os.path.join(workdir, "**", "events.out.tfevents.*"), recursive=True)
  for path in sorted(paths):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag in TAGS and value.HasField("tensor"):
          # tf.summary.image: [width, height, PNG, PNG, ...]; the first picture.
          found[value.tag] = (event.step, tf.make_ndarray(value.tensor)[2])
  return {tag: png for tag, (_, png) in found.items()}


def main(argv):
  del argv
  from mnist_tf2.errors import UserError  # pylint: disable=g-import-not-at-top
  images = last_images(FLAGS.workdir)
  if not images:
    raise UserError(f"no pictures in the summaries under --workdir={FLAGS.workdir}")
  os.makedirs(FLAGS.out, exist_ok=True)
  for tag, png in images.items():
    path = os.path.join(FLAGS.out, f"{FLAGS.prefix}{tag}.png")
    with open(path, "wb") as f:
      f.write(png)
    print(f"{path}: {len(png):,} bytes")


if __name__ == "__main__":
  cli.run(main, help_text=lambda: cli.command_help(__doc__, ["workdir", "out", "prefix"]))
