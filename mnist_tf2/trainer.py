"""The train step, and the compiled loops that run it several steps a call.

`Trainer.train_step` is one optimizer step on one replica's share of the global
batch: forward pass, loss, gradients, update. `Trainer.train(inputs, num_steps)`
runs `num_steps` of them in one `tf.function` call through `strategy.run`, so
the same code serves one CPU, many GPUs and many machines. The global step is
`optimizer.iterations`.

`XlaTrainer` runs the same step with the whole chunk compiled as one XLA
program that gathers its batches from the training set held in memory.
`create_trainer` picks it where it can run; both read the same stream of
examples (`datasets.stream_indices`) with the same distortions.
"""

import keras
import tensorflow as tf

from mnist_tf2 import augment
from mnist_tf2 import datasets
from mnist_tf2 import distribute
from mnist_tf2 import models
from mnist_tf2 import optimizers
from mnist_tf2.constants import NUM_CLASSES


def cross_entropy(labels, logits, label_smoothing=0.0):
  """Per-example softmax cross-entropy from logits (numerically stable)."""
  targets = tf.one_hot(labels, NUM_CLASSES, dtype=logits.dtype)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES
  return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def build_model_and_optimizer(config, strategy=None):
  """The model of `config` under its dtype policy, and its optimizer with slots built.

  Args:
    config: the resolved Config.
    strategy: variables are created in its scope (default: the current one).

  Returns:
    (model, optimizer); the optimizer is wrapped in a LossScaleOptimizer under
    the mixed_float16 policy.
  """
  strategy = strategy or tf.distribute.get_strategy()
  policy = distribute.precision_policy(config)
  with strategy.scope():
    # Layers take the global dtype policy when they are built; restore it
    # afterwards so nothing else in the process inherits it.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
      model = models.create_model(config)
    finally:
      keras.config.set_dtype_policy(previous_policy)
    optimizer = optimizers.create_optimizer(config)
    if policy == "mixed_float16":
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Build the slots now, before any restore (see checkpoints.Checkpointer).
    optimizer.build(model.trainable_variables)
  return model, optimizer


def create_trainer(config, strategy, model, optimizer) -> "Trainer":
  """`XlaTrainer` where the whole chunk can be one XLA program, else `Trainer`.

  That needs --jit_compile, one replica (XLA cannot compile the all-reduce),
  no elastic distortion (its smoothing is a convolution) and, on a CPU, a model
  without convolutions (XLA runs them slowly there; see README, Performance).
  """
  on_cpu = not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
  has_convolutions = any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
  augmentation = augment.Augmentation.from_config(config)
  in_xla = (config.jit_compile and strategy.num_replicas_in_sync == 1
            and not (augmentation and augmentation.elastic_alpha)
            and not (on_cpu and has_convolutions))
  return (XlaTrainer if in_xla else Trainer)(config, strategy, model, optimizer)


class Trainer:
  """The train step of one model and optimizer, run in compiled chunks from tf.data."""

  jit_compile = None  # Of the chunk's loop; XlaTrainer compiles it whole.
  xla = "on (forward and backward)"  # What --jit_compile compiles, for the start-up line.

  def __init__(self, config, strategy, model, optimizer):
    self.config = config
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    self.augmentation = augment.Augmentation.from_config(config)
    # The examples of the stream read so far: where the input continues, whatever
    # the batch size (checkpointed; `chunk_inputs` counts each chunk's).
    self.examples_consumed = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="examples_consumed")
    # Loss scaling keeps float16 gradients from underflowing; keras wraps the
    # optimizer for it (see distribute.precision_policy for when).
    self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # Compiled in place: each name still leads to its def below.
    self.train = tf.function(self.train, jit_compile=self.jit_compile)
    if config.jit_compile:
      # One fused program for a replica's forward and backward pass.
      self.compute_gradients = tf.function(self.compute_gradients, jit_compile=True)
    if strategy.num_replicas_in_sync == 1 and not self.loss_scaling:
      # Nothing to all-reduce (XLA cannot compile that), so the update's many
      # small elementwise ops can be one fused program too.
      self.apply_gradients = tf.function(self.apply_gradients, jit_compile=True)

  def inputs(self, split):
    """The training input: a distributed iterator over `split`'s training stream.

    It starts at the next unread position (`examples_consumed`), so create it
    after any restore.
    """
    start = int(self.examples_consumed.numpy())
    return iter(self.strategy.distribute_datasets_from_function(
        lambda ctx: datasets.train_dataset(
            split, batch_size=ctx.get_per_replica_batch_size(self.config.batch_size),
            seed=self.config.seed, start=start, input_context=ctx,
            augmentation=self.augmentation)))

  def chunk_inputs(self, inputs, num_steps):
    """What `train` reads for the next `num_steps` steps: the iterator itself.

    Counts the chunk's examples as read (`examples_consumed`).
    """
    self.examples_consumed.assign_add(int(num_steps) * self.config.batch_size)
    return inputs

  def next_batch(self, inputs, i):
    """The (images, labels) of the chunk's step `i`."""
    del i
    return next(inputs)

  def train(self, inputs, num_steps):
    """Runs up to `num_steps` train steps in one compiled call.

    Stops early at the first non-finite loss.

    Args:
      inputs: from `chunk_inputs(self.inputs(split), num_steps)`.
      num_steps: int64 scalar tensor.

    Returns:
      dict of scalar tensors: the sums `metrics.Metrics.update` adds up over the
      finite steps (`loss_sum` of the steps' mean losses, `loss_count` = those
      steps, `num_correct`, `num_examples`), the `gradient_norm` of the last
      step (the one the loop logs), the `steps` run, and `nonfinite_step` (the
      global step whose loss was NaN/Inf, or -1).
    """
    loss_sum = tf.constant(0.0)
    correct_sum = tf.constant(0, tf.int64)
    grad_norm = tf.constant(0.0)
    steps = tf.constant(0, tf.int64)
    nonfinite_step = tf.constant(-1, tf.int64)
    for i in tf.range(num_steps):
      step = tf.cast(self.optimizer.iterations, tf.int64) + 1
      loss, correct, grad_norm = self.strategy.run(
          self.train_step, args=(*self.next_batch(inputs, i), tf.equal(i, num_steps - 1)))
      loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
      correct = self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
      grad_norm = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None)
      steps += 1
      if not tf.math.is_finite(loss):
        nonfinite_step = step
        break
      loss_sum += loss
      correct_sum += tf.cast(correct, tf.int64)
    finite_steps = steps - tf.cast(nonfinite_step >= 0, tf.int64)
    return {"loss_sum": loss_sum, "loss_count": finite_steps, "num_correct": correct_sum,
            "num_examples": finite_steps * self.config.batch_size,
            "gradient_norm": grad_norm, "steps": steps, "nonfinite_step": nonfinite_step}

  def train_step(self, images, labels, measure_gradient):
    """One optimizer step on this replica's share of the global batch.

    Returns:
      This replica's loss (already divided by the global batch), its number of
      correct predictions, and the gradient norm (0 unless `measure_gradient`).
    """
    loss, grads, correct = self.compute_gradients(images, labels, self._dropout_seed())
    gradient_norm = tf.constant(0.0)
    if self.config.summaries:
      # Before the update, which may change the loss scale; only when logged,
      # as the extra pass over every gradient is not free.
      gradient_norm = tf.cond(measure_gradient, lambda: self._gradient_norm(grads),
                              lambda: gradient_norm)
    self.apply_gradients(grads)
    return loss, correct, gradient_norm

  def compute_gradients(self, images, labels, dropout_seed):
    """Loss, gradients and correct predictions on this replica's share of the batch."""
    with tf.GradientTape() as tape:
      # Under a mixed policy the model computes in 16 bits; the softmax and the
      # loss are kept in float32, where they are accurate.
      logits = tf.cast(self.model(images, training=True, dropout_seed=dropout_seed),
                       tf.float32)
      per_example_loss = cross_entropy(labels, logits, self.config.label_smoothing)
      # Divide by the *global* batch, not this replica's: the gradients of all
      # replicas are summed, so the sum is the gradient of the global mean.
      loss = tf.nn.compute_average_loss(per_example_loss,
                                        global_batch_size=self.config.batch_size)
      # apply_gradients divides the scale back out (and skips the step if the
      # gradients overflowed).
      scaled_loss = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
    grads = tape.gradient(scaled_loss, self.model.trainable_variables)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                             labels), tf.int32))
    return loss, grads, correct

  def apply_gradients(self, grads):
    """The update; with several replicas it all-reduces (sums) the gradients first."""
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

  def _dropout_seed(self):
    """A stateless seed for this step and replica: [seed, step * replicas + replica].

    Deriving it from the step (which the checkpoint holds) makes a resumed run
    draw exactly the masks an uninterrupted one would, and gives every replica
    its own masks.
    """
    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    step = tf.cast(self.optimizer.iterations, tf.int64)
    counter = step * self.strategy.num_replicas_in_sync + replica
    return tf.stack([tf.constant(self.config.seed, tf.int64), counter])

  def _gradient_norm(self, grads):
    """The global L2 norm of the gradient of the mean loss, for TensorBoard.

    `grads` is this replica's share of the all-reduced sum, so scaling by the
    replica count gives the gradient of this replica's own mean loss: exact with
    one replica; with several, `train` averages the replicas' norms (reading
    slightly high, as each is measured on a smaller batch). Measuring the
    all-reduced gradient would mean all-reducing it a second time.
    """
    norm = tf.linalg.global_norm(grads) * self.strategy.num_replicas_in_sync
    if self.loss_scaling:
      # Divide the loss scale out; a step whose scaled gradients overflowed
      # (which the optimizer skips) counts as 0.
      norm = norm / tf.cast(self.optimizer.dynamic_scale, norm.dtype)
      norm = tf.where(tf.math.is_finite(norm), norm, tf.zeros_like(norm))
    return norm


class XlaTrainer(Trainer):
  """`Trainer` whose whole chunk -- gather, distort, forward, backward, update -- is
  one XLA program, reading the training set from memory: no per-step dispatch
  and no tf.data pipeline, which dominate a step of the small models."""

  jit_compile = True
  xla = "on (whole loop)"

  def inputs(self, split):
    """The training input: the whole split, uint8 images and int32 labels, as tensors."""
    return tf.constant(split.images), tf.constant(split.labels)

  def chunk_inputs(self, inputs, num_steps):
    """What `train` reads for the next `num_steps` steps: `inputs` and, per step,
    the examples (and distortions) to gather.

    Raises:
      ValueError: `num_steps` exceeds --steps_per_loop, the chunk the XLA
        program is compiled for.
    """
    if int(num_steps) > self.config.steps_per_loop:
      raise ValueError(f"a chunk of {int(num_steps)} steps is longer than --steps_per_loop="
                       f"{self.config.steps_per_loop}")
    images, labels = inputs
    chunk = self._chunk_examples(images.shape[0])
    self.examples_consumed.assign_add(int(num_steps) * self.config.batch_size)
    return (images, labels, *chunk)

  @tf.function
  def _chunk_examples(self, num_examples):
    """The example indices [steps_per_loop, batch] and affine transforms (or None)
    of the next `steps_per_loop` steps.

    Computed outside XLA (index_shuffle has no XLA kernel, and XLA's random
    bits differ from tf.data's) for a fixed number of steps, so one XLA program
    serves chunks of every length. The chunk starts at `examples_consumed`.
    """
    max_steps, batch_size = self.config.steps_per_loop, self.config.batch_size
    positions = (self.examples_consumed
                 + tf.range(max_steps, dtype=tf.int64)[:, tf.newaxis] * batch_size
                 + tf.range(batch_size, dtype=tf.int64))
    indices = datasets.stream_indices(positions, num_examples, self.config.seed)
    transforms = None
    if self.augmentation:
      # Keyed by each step's first stream position, as tf.data keys them.
      transforms = tf.map_fn(
          lambda first: augment.affine_transforms(
              batch_size, augment.augment_key(self.config.seed, first), self.augmentation),
          positions[:, 0], fn_output_signature=tf.float32)
    return indices, transforms

  def next_batch(self, inputs, i):
    images, labels, indices, transforms = inputs
    batch_images = datasets.normalize(tf.gather(images, indices[i]))
    if transforms is not None:
      batch_images = augment.warp(batch_images, transforms[i])
    return batch_images, tf.gather(labels, indices[i])
