"""The train step and the eval step: per replica, compiled, several steps a call.

`Trainer.train_loop(iterator, num_steps)` runs `num_steps` optimizer steps in
one `tf.function` call, pulling batches from the tf.data pipeline. Each step is
written for a single replica and run through `strategy.run`, so the same code
serves one CPU, many GPUs and many machines. The global step is
`optimizer.iterations`.

With `--jit_compile` on one replica, no elastic distortion and, on a CPU, no
convolutions, `loop_in_xla` is set and `train_loop_in_memory(images, labels,
num_steps)` runs instead: the whole chunk -- gathering each batch from the
training set held in memory, distorting it, forward, backward, update -- is one
XLA program, with no per-step dispatch at all. It reads the same stream of
examples (`datasets.stream_indices`) with the same distortions.
"""

import keras
import numpy as np
import tensorflow as tf

from mnist_tf2 import datasets
from mnist_tf2.models import NUM_CLASSES


def cross_entropy(labels, logits, label_smoothing=0.0):
  """Per-example softmax cross-entropy from logits (numerically stable)."""
  targets = tf.one_hot(labels, NUM_CLASSES, dtype=logits.dtype)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES
  return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


class Trainer:
  """Owns the compiled train and eval functions for one model and optimizer."""

  def __init__(self, config, strategy, model, optimizer):
    self.config = config
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    # Loss scaling keeps float16 gradients from underflowing; keras wraps the
    # optimizer for it (see distribute.precision_policy for when it is used).
    self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # XLA compiles the forward and backward pass of a replica into one fused
    # program. The update stays outside: apply_gradients all-reduces across
    # replicas and devices, which XLA cannot compile (nor the loop around it,
    # which pulls from the input iterator).
    self._gradients = (tf.function(self._replica_gradients, jit_compile=True)
                       if config.jit_compile else self._replica_gradients)
    # The update itself (Adam: about ten elementwise ops per variable) runs as
    # one fused XLA program when there is nothing to all-reduce: 1.5x the
    # steps/s of the 128/32 MLP here (see README, Performance). With several
    # replicas it stays as it is, for the reason above.
    self._apply_gradients = (tf.function(self._apply_gradients_fn, jit_compile=True)
                             if strategy.num_replicas_in_sync == 1 and not self.loss_scaling
                             else self._apply_gradients_fn)
    self.train_loop = tf.function(self._iterator_loop)
    # The tf.data pipeline costs ~0.1 ms of CPU a batch and each step's ops
    # their own dispatch: on the small models that is most of a step. When
    # nothing stands in the way -- one replica (no all-reduce), no elastic
    # distortion (its Gaussian smoothing is a convolution) -- the whole chunk is
    # one XLA program reading the training set from memory: 2.3x the images/s
    # of the 128/32 MLP (README, Performance). Not for convolutions on a CPU:
    # inside an XLA loop there they ran 70x slower (32 images/s, the cnn
    # here), and even alone XLA's CPU convolutions run at half speed, so the
    # cnn presets leave --jit_compile off.
    on_cpu = not tf.config.list_logical_devices("GPU") and not tf.config.list_logical_devices(
        "TPU")
    has_convolutions = any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
    self.augmentation = datasets.Augmentation.from_config(config)
    self.loop_in_xla = (config.jit_compile and strategy.num_replicas_in_sync == 1
                        and not (self.augmentation and self.augmentation.elastic_alpha)
                        and not (on_cpu and has_convolutions))
    self._in_memory_loop = tf.function(self._in_memory_loop_fn, jit_compile=True)
    self._chunk_loop = tf.function(self._chunk_loop_fn)
    self._eval_loop = tf.function(self._eval_loop_fn)
    self._predict_step = tf.function(self._predict_step_fn)

  # --- training ---------------------------------------------------------------------------

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

  def _replica_gradients(self, images, labels, dropout_seed):
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

  def _apply_gradients_fn(self, grads):
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

  def _replica_train_step(self, images, labels, measure_gradient):
    """One optimizer step on this replica's share of the global batch."""
    loss, grads, correct = self._gradients(images, labels, self._dropout_seed())
    # Measured before apply_gradients, which may change the loss scale, and
    # only when asked: even this one pass over every gradient costs 3-7% of a
    # step of these small models.
    gradient_norm = tf.constant(0.0)
    if self.config.summaries:
      gradient_norm = tf.cond(measure_gradient, lambda: self._gradient_norm(grads),
                              lambda: gradient_norm)
    self._apply_gradients(grads)
    return loss, correct, gradient_norm

  def _gradient_norm(self, grads):
    """The global L2 norm of the gradient of the mean loss, for TensorBoard.

    `grads` is this replica's share of the all-reduced sum, so scaling by the
    replica count gives the gradient of this replica's own mean loss: exact with
    one replica; with several, the loop averages the replicas' norms (reading
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

  def _iterator_loop(self, iterator, num_steps):
    return self._loop(lambda i: next(iterator), num_steps)

  def chunk_runner(self, split):
    """Returns `run(num_steps)`: the next `num_steps` steps on `split`, as `train_loop` does.

    The input starts where the optimizer's step says (position = step * global
    batch), so create it after any restore. With `loop_in_xla` the XLA loop
    gathers its batches from `split` in memory; otherwise a distributed
    tf.data iterator feeds `train_loop`.
    """
    if self.loop_in_xla:
      images, labels = tf.constant(split.images), tf.constant(split.labels)
      return lambda num_steps: self.train_loop_in_memory(images, labels, num_steps)
    start = int(self.optimizer.iterations.numpy()) * self.config.batch_size
    iterator = iter(self.strategy.distribute_datasets_from_function(
        lambda ctx: datasets.train_dataset(
            split, batch_size=ctx.get_per_replica_batch_size(self.config.batch_size),
            seed=self.config.seed, start=start, input_context=ctx,
            augmentation=self.augmentation)))
    return lambda num_steps: self.train_loop(iterator, num_steps)

  def train_loop_in_memory(self, images, labels, num_steps):
    """`train_loop` for `loop_in_xla`: batches gathered from the training set in memory.

    Args:
      images: uint8 [N, 28, 28, 1], the whole training split (a tensor).
      labels: int32 [N].
      num_steps: at most `config.steps_per_loop`.

    Returns:
      As `train_loop`.
    """
    if int(num_steps) > self.config.steps_per_loop:
      # The program is compiled for that many steps' batches.
      raise ValueError(f"a chunk of {int(num_steps)} steps is longer than --steps_per_loop="
                       f"{self.config.steps_per_loop}")
    return self._chunk_loop(images, labels, tf.cast(num_steps, tf.int64))

  def _chunk_loop_fn(self, images, labels, num_steps):
    # Which examples the chunk's steps read, computed outside XLA (index_shuffle
    # has no XLA kernel) for a fixed `steps_per_loop` steps, so that one XLA
    # program serves chunks of every length. The stream position of a step is
    # step * batch, as on the tf.data path.
    max_steps = self.config.steps_per_loop
    batch_size = self.config.batch_size
    step = tf.cast(self.optimizer.iterations, tf.int64)
    positions = ((step + tf.range(max_steps, dtype=tf.int64))[:, tf.newaxis] * batch_size
                 + tf.range(batch_size, dtype=tf.int64))
    indices = datasets.stream_indices(positions, images.shape[0], self.config.seed)
    transforms = None
    if self.augmentation:
      # Drawn here, as tf.data draws them (XLA's random bits differ), keyed by
      # each step's first stream position; XLA only applies them.
      transforms = tf.map_fn(
          lambda first: datasets.affine_transforms(
              batch_size, datasets.augment_key(self.config.seed, first), self.augmentation),
          positions[:, 0], fn_output_signature=tf.float32)
    return self._in_memory_loop(images, labels, indices, transforms, num_steps)

  def _in_memory_loop_fn(self, images, labels, indices, transforms, num_steps):
    def next_batch(i):
      batch_images = datasets.normalize(tf.gather(images, indices[i]))
      if transforms is not None:
        batch_images = datasets.warp(batch_images, transforms[i])
      return batch_images, tf.gather(labels, indices[i])
    return self._loop(next_batch, num_steps)

  def _loop(self, next_batch, num_steps):
    """Runs up to `num_steps` steps; stops early at the first non-finite loss.

    `next_batch(i)` gives the `(images, labels)` of the chunk's step i.

    Returns:
      dict of scalars: mean `loss` and `accuracy` over the steps run,
      `gradient_norm` of the last step (the one the loop logs), `steps` run,
      and `nonfinite_step` (the global step whose loss was NaN/Inf, or -1).
    """
    loss_sum = tf.constant(0.0)
    correct_sum = tf.constant(0, tf.int64)
    grad_norm = tf.constant(0.0)
    steps = tf.constant(0, tf.int64)
    nonfinite_step = tf.constant(-1, tf.int64)
    for i in tf.range(num_steps):
      step = tf.cast(self.optimizer.iterations, tf.int64) + 1
      loss, correct, grad_norm = self.strategy.run(
          self._replica_train_step, args=(*next_batch(i), tf.equal(i, num_steps - 1)))
      loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
      correct = self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
      grad_norm = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None)
      steps += 1
      if not tf.math.is_finite(loss):
        nonfinite_step = step
        break
      loss_sum += loss
      correct_sum += tf.cast(correct, tf.int64)
    finite_steps = tf.cast(tf.maximum(steps - tf.cast(nonfinite_step >= 0, tf.int64), 1),
                           tf.float32)
    return {
        "loss": loss_sum / finite_steps,
        "accuracy": tf.cast(correct_sum, tf.float32) / (finite_steps * self.config.batch_size),
        "gradient_norm": grad_norm,
        "steps": steps,
        "nonfinite_step": nonfinite_step,
    }

  # --- evaluation -------------------------------------------------------------------------

  def _replica_eval_step(self, images, labels):
    logits = tf.cast(self.model(images, training=False), tf.float32)
    loss = tf.reduce_sum(cross_entropy(labels, logits))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                             labels), tf.int64))
    count = tf.cast(tf.shape(labels)[0], tf.int64)
    return loss, correct, count

  def _eval_loop_fn(self, dataset):
    loss_sum = tf.constant(0.0)
    correct = tf.constant(0, tf.int64)
    count = tf.constant(0, tf.int64)
    for images, labels in dataset:
      batch = self.strategy.run(self._replica_eval_step, args=(images, labels))
      batch_loss, batch_correct, batch_count = (
          self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in batch)
      loss_sum += batch_loss
      correct += batch_correct
      count += batch_count
    return loss_sum, correct, count

  def evaluate(self, dataset):
    """Evaluates on every example of a distributed finite dataset exactly once.

    Returns:
      dict with `num_examples`, `num_correct`, `accuracy` (precision @ 1) and
      mean `loss`, as Python numbers.
    """
    loss_sum, correct, count = (np.asarray(t) for t in self._eval_loop(dataset))
    count = int(count)
    return {
        "num_examples": count,
        "num_correct": int(correct),
        "accuracy": float(correct) / max(count, 1),
        "loss": float(loss_sum) / max(count, 1),
    }

  def _predict_step_fn(self, images):
    return tf.argmax(self.model(images, training=False), -1, output_type=tf.int32)

  def predict_classes(self, dataset):
    """The predicted class of every example of a plain (undistributed) dataset, in order.

    Run once at the end for the TensorBoard pictures of the test set, so it
    stays out of the per-replica evaluation path.
    """
    return np.concatenate([self._predict_step(images).numpy() for images, _ in dataset])
