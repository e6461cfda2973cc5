"""TensorBoard output for a run.

Runs are sibling directories under the workdir, all using the same tag names
(`loss`, `accuracy`), so TensorBoard overlays their curves:

  .                  (the workdir) text: the resolved config and the command line
  hparams/           the HParams session: the resolved config as hparams, and
                     the final metrics (`<split>/loss`, `<split>/accuracy`)
  train/             running means over the training minibatches (loss,
                     accuracy), gradient_norm of the logged step, learning_rate,
                     examples_per_sec;
                     the input grid, weight/activation histograms, the softmax
                     class weights, the traced train step, the profiler trace
  eval/train/        a full evaluation pass over the training split
  eval/validation/   ... over the validation split
  eval/test/         ... over the test split, plus the confusion matrix and
                     the misclassified examples of the final evaluation

Several workdirs under one `--logdir` compare in the HParams dashboard, one
session group per workdir. The session keeps its metrics in its own run: the
plugin finds them at `<session run>/<group>`, and with `--logdir=WORKDIR` the
workdir's own run is named ".", which would make that "./eval/test", a run
that does not exist.
"""

import contextlib
import glob
import json
import os
import shlex

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from mnist_tf2 import augment
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import pictures
from mnist_tf2.constants import SPLITS
from mnist_tf2.models import SoftmaxRegression

INPUT_GRID_SIZE = 64
MISCLASSIFIED_SHOWN = 32
HPARAMS_RUN = "hparams"
# The metrics of the HParams dashboard (test first), tags of the final metrics in HPARAMS_RUN.
HPARAMS_METRICS = [f"{split}/{name}" for split in reversed(SPLITS)
                   for name in ("accuracy", "loss")]


# tf.summary.histogram one-hot encodes every value into its bucket (values x 30
# floats), which for the cnn's dense kernel is hundreds of MB (measured in
# docs/ARCHITECTURE.md); a strided sample draws the same distribution.
MAX_HISTOGRAM_VALUES = 1 << 16


def histogram_sample(values):
  """At most MAX_HISTOGRAM_VALUES of `values`, evenly strided over the flat tensor."""
  flat = tf.reshape(values, [-1])
  size = flat.shape[0]
  if size is None or size <= MAX_HISTOGRAM_VALUES:
    return flat
  return flat[::-(-size // MAX_HISTOGRAM_VALUES)]


class Summaries:
  """Owns the summary writers; every method is a no-op off the chief.

  Args:
    workdir: the run's workdir; run directories are created under it.
    enabled: False off the chief or with --summaries=false.
    histogram_every: write histograms every N steps (0: never).
    profile_steps: the --profile_steps string, "A,B" or "".
  """

  def __init__(self, workdir, enabled=True, histogram_every=0, profile_steps=""):
    self.workdir = workdir
    self.enabled = enabled
    self.histogram_every = histogram_every
    self.profile_range = config_lib.profile_range(profile_steps)
    self._writers = {}
    self._graph_written = False
    self._profiling = False
    self._last_histogram_step = None
    self._probe_images = None  # A fixed batch whose activations the histograms show.
    # One compiled call instead of a few dozen eager ops per histogram step.
    self._histograms = tf.function(self._histograms_fn)

  def writer(self, run):
    """The writer for run directory `run` (e.g. "train", "eval/test", "" the workdir)."""
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.workdir, run))
    return self._writers[run]

  # --- scalars ----------------------------------------------------------------------------

  def scalars(self, run, step, scalars):
    if not self.enabled:
      return
    with self.writer(run).as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)

  def train_scalars(self, step, scalars):
    """`scalars`: loss, accuracy, gradient_norm, learning_rate, examples_per_sec."""
    self.scalars("train", step, scalars)

  def eval_scalars(self, step, split, metrics):
    """Loss and accuracy (a `metrics.Metrics`) of one evaluated split, under `eval/<split>`."""
    self.scalars(f"eval/{split}", step, {"loss": metrics.loss, "accuracy": metrics.accuracy})

  # --- the start of a run -----------------------------------------------------------------

  def run_start(self, step, config, model, train_split, argv):
    """Config as text and hparams, a grid of training inputs, the first histograms.

    Args:
      step: the global step the run starts (or resumes) at.
      config: the resolved Config.
      model: the built model.
      train_split: the training Split; its pipeline's first batch is shown.
      argv: the command line.
    """
    if not self.enabled:
      return
    with self.writer("").as_default(step=step):
      tf.summary.text("config", "```\n" + config.to_json() + "\n```",
                      description="The resolved config: defaults, then the preset, then flags.")
      tf.summary.text("command_line", "`" + shlex.join(argv) + "`",
                      description="The command that started (or resumed) this run.")
    # One session per workdir, this run's: the HParams dashboard shows the first
    # session it finds next to the last final metrics, which this run writes.
    for path in glob.glob(os.path.join(self.workdir, HPARAMS_RUN, "events.out.tfevents.*")):
      os.remove(path)
    with self.writer(HPARAMS_RUN).as_default(step=step):
      hp.hparams_config(hparams=[_hparam(name) for name in config_lib.FIELDS],
                        metrics=[hp.Metric(tag, display_name=tag.replace("/", " "))
                                 for tag in HPARAMS_METRICS])
      hp.hparams(config.to_dict(), trial_id=os.path.basename(os.path.abspath(self.workdir)))
    # The first batch the training pipeline yields for this seed: what the model
    # sees, normalised and distorted if --augment (from a pipeline of its own,
    # so the training stream is not advanced).
    images, _ = next(iter(datasets.train_dataset(
        train_split, batch_size=min(INPUT_GRID_SIZE, len(train_split.labels)),
        seed=config.seed, augmentation=augment.Augmentation.from_config(config))))
    self._probe_images = images
    with self.writer("train").as_default(step=step):
      tf.summary.image("inputs", pictures.image_grid(images.numpy()),
                       description="A batch of training inputs as the pipeline feeds them.")

  # --- around each compiled training chunk ------------------------------------------------

  @contextlib.contextmanager
  def train_chunk(self, step, num_steps):
    """Wraps one `Trainer.train` call running steps `step + 1 .. step + num_steps`.

    Traces the graph of the first chunk, and starts or stops the profiler when
    the chunk starts at A or ends at B of --profile_steps (the loop stops its
    chunks there, see loop.next_stop).
    """
    if not self.enabled:
      yield
      return
    trace_graph = not self._graph_written
    if trace_graph:
      tf.summary.trace_on(graph=True, profiler=False)
    if self.profile_range and not self._profiling and (
        self.profile_range[0] <= step < self.profile_range[1]):
      tf.profiler.experimental.start(os.path.join(self.workdir, "train"))
      self._profiling = True
    try:
      yield
    finally:
      if trace_graph:
        with self.writer("train").as_default(step=step):
          tf.summary.trace_export("train_loop")
        self._graph_written = True
      if self._profiling and step + num_steps >= self.profile_range[1]:
        tf.profiler.experimental.stop()
        self._profiling = False

  # --- the model ----------------------------------------------------------------------------

  def model_state(self, step, model):
    """Histograms of the weights and activations (if --histogram_every), and the
    softmax model's class weights; the loop calls it when due and at the end."""
    if not self.enabled or step == self._last_histogram_step:
      return
    self._last_histogram_step = step
    with self.writer("train").as_default(step=step):
      if self.histogram_every:
        self._histograms(model, tf.constant(step, tf.int64))
      if isinstance(model, SoftmaxRegression):
        tf.summary.image(
            "class_weights", pictures.class_weights_image(model.logits.kernel.numpy()),
            description="Weights of each class as a 28x28 picture: blue pixels are evidence "
            "for the class, red ones against it.")

  def _histograms_fn(self, model, step):
    for variable in model.trainable_variables:
      # "cnn/conv1/kernel" -> "weights/conv1/kernel": grouped by layer.
      tf.summary.histogram("weights/" + variable.path.split("/", 1)[-1],
                           histogram_sample(variable), step=step)
    if self._probe_images is not None:
      for name, activation in layer_activations(model, self._probe_images).items():
        tf.summary.histogram(f"activations/{name}", histogram_sample(activation), step=step)

  # --- the end of a run -------------------------------------------------------------------

  def run_end(self, step, metrics, model, test_split, batch_size):
    """Final metrics for HParams, final histograms, the confusion matrix and the
    misclassified test examples.

    Args:
      step: the final global step.
      metrics: {split: metrics.Metrics} of the final evaluation; without
        "test" (not evaluated), the test pictures are skipped.
      model: the trained model.
      test_split: the test Split (uint8 images, labels), in order.
      batch_size: the evaluation batch size, for the pass that finds the
        misclassified examples.
    """
    if not self.enabled:
      return
    self.scalars(HPARAMS_RUN, step, {f"{split}/{name}": getattr(values, name)
                                     for split, values in metrics.items()
                                     for name in ("accuracy", "loss")})
    self.model_state(step, model)
    if "test" in metrics:
      self._test_pictures(step, metrics["test"].confusion_matrix, model, test_split, batch_size)

  def _test_pictures(self, step, matrix, model, test_split, batch_size):
    """The confusion matrix and the first misclassified test examples."""
    labels = test_split.labels
    predict = tf.function(lambda images: tf.argmax(model(images, training=False), -1,
                                                   output_type=tf.int32))
    predicted = np.concatenate([predict(images).numpy() for images, _ in datasets.eval_dataset(
        test_split, batch_size=batch_size)])
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[:MISCLASSIFIED_SHOWN]
    with self.writer("eval/test").as_default(step=step):
      tf.summary.image(
          "confusion_matrix", pictures.confusion_matrix_image(matrix),
          description="Rows: true class; columns: predicted class; the counts of the final "
          "test evaluation. Counts as JSON: " + json.dumps(matrix.tolist()))
      if len(shown):
        tf.summary.image(
            "misclassified",
            pictures.misclassified_grid(test_split.images[shown], predicted[shown],
                                        labels[shown]),
            description=f"The first {len(shown)} of {len(wrong)} misclassified test "
            "examples, each captioned \"predicted (true label)\". Test indices: "
            + ", ".join(str(i) for i in shown))

  def flush(self):
    for writer in self._writers.values():
      writer.flush()


def _hparam(name):
  """The HParams entry of a config field; fields with choices get a discrete domain."""
  choices = config_lib.FIELDS[name].metadata.get("choices")
  return hp.HParam(name, hp.Discrete(list(choices)) if choices else None,
                   description=config_lib.FIELDS[name].metadata["help"])


def layer_activations(model, images):
  """The output of every layer with weights, running `model.layers` as a chain.

  All three models are chains of their layers in definition order (dropout,
  the one step outside a layer, is off at inference); tests check the chain
  reproduces the model's logits.
  """
  activations = {}
  x = images
  for layer in model.layers:
    x = layer(x, training=False)
    if layer.weights:
      activations[layer.name] = x
  return activations
