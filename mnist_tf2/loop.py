"""The outer loop: restore, train in compiled chunks, log, evaluate, save.

`train_and_evaluate(config)` is the one owner of the schedule. Everything is
keyed on the global step, `optimizer.iterations`, so a resumed run picks up the
schedule where the interrupted one left it.
"""

import hashlib
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from mnist_tf2 import checkpoints
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import distribute
from mnist_tf2 import export
from mnist_tf2 import models
from mnist_tf2 import optimizers
from mnist_tf2 import summaries as summaries_lib
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2.errors import Preempted
from mnist_tf2.errors import UserError

SPLIT_TITLES = {"train": "Training", "validation": "Validation", "test": "Test"}
# Fields that change which variables a checkpoint holds, or their shapes. (Not,
# e.g., dropout_rate, batch_size or learning_rate: a resumed run may change them.)
STRUCTURAL_FIELDS = ("model", "hidden1", "hidden2", "optimizer")


def prepare_workdir(config) -> None:
  """Creates the workdir and refuses one we cannot write or that holds another model.

  Nothing in an existing workdir is changed here (config.json is rewritten
  only once the checkpoint has been restored, see train_and_evaluate).
  """
  workdir = config.workdir
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    try:
      with open(saved_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read {saved_path}: {e}; use a new --workdir") from None
    differ = [name for name in STRUCTURAL_FIELDS
              if name in saved and saved[name] != getattr(config, name)]
    if differ:
      raise UserError(
          f"--workdir={workdir} holds a run with "
          f"{', '.join(f'{name}={saved[name]!r}' for name in differ)} ({saved_path}), this run "
          f"has {', '.join(f'{name}={getattr(config, name)!r}' for name in differ)}; "
          "use a new --workdir (nothing was changed)")
  for directory in (workdir, os.path.join(workdir, "checkpoints")):
    try:
      os.makedirs(directory, exist_ok=True)
      probe = os.path.join(directory, ".write_test")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      where = "" if directory == workdir else f" ({directory})"
      raise UserError(f"cannot write to --workdir={workdir}{where}: {e.strerror or e}") from None


def write_json(path, data) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def format_eval(split, metrics) -> str:
  """The tutorial's evaluation lines for one split."""
  return (f"{SPLIT_TITLES[split]} Data Eval:\n"
          f"  Num examples: {metrics['num_examples']}  Num correct: {metrics['num_correct']}"
          f"  Precision @ 1: {metrics['accuracy']:0.4f}")


class ProgressBar:
  """A one-line bar on a terminal; silent when stdout is a log file or CI."""

  def __init__(self, total, stream=sys.stdout):
    self.total = total
    self.stream = stream
    self.enabled = stream.isatty()

  def update(self, step):
    if self.enabled:
      done = int(30 * step / max(self.total, 1))
      self.stream.write(f"\r[{'=' * done}{' ' * (30 - done)}] {step}/{self.total}")
      self.stream.flush()

  def clear(self):
    if self.enabled:
      self.stream.write("\r" + " " * 60 + "\r")


def next_stop(step, config, extra_stops=()) -> int:
  """The next step at which the loop must leave the compiled chunk."""
  stops = [config.max_steps, step + config.steps_per_loop, *extra_stops]
  for every in (config.log_every, config.eval_every, config.checkpoint_every):
    if every:
      stops.append((step // every + 1) * every)
  return min(stops)


def weights_digest(model) -> str:
  """SHA-256 of the model's weights: equal on every worker, and across identical runs."""
  digest = hashlib.sha256()
  for variable in model.weights:
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()


def train_and_evaluate(config) -> dict:
  """Trains `config.model` to `config.max_steps` and evaluates it.

  Resumes from the newest checkpoint in the workdir, if there is one. SIGTERM
  or SIGINT saves a checkpoint at the step reached and raises `Preempted`.
  (Not on multi-worker runs: there the workers would have to agree on the step.)

  Returns:
    The results dict also written to `<workdir>/results.json`.
  """
  start_time = time.time()
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)
  strategy = distribute.create_strategy(config)
  replicas = strategy.num_replicas_in_sync
  per_replica_batch = distribute.per_replica_batch_size(config.batch_size, replicas)
  chief = distribute.is_chief(strategy)
  workdir = distribute.worker_workdir(config.workdir, strategy)
  try:
    with checkpoints.PreemptionWatcher(enabled=config.strategy != "multi_worker") as preemption:
      return _train_and_evaluate(config, strategy, workdir, chief, per_replica_batch,
                                 start_time, preemption)
  finally:
    distribute.cleanup_worker_workdir(workdir, config.workdir)


def _train_and_evaluate(config, strategy, workdir, chief, per_replica_batch, start_time,
                        preemption):
  """The body of `train_and_evaluate`, writing to this worker's `workdir`."""
  if chief:
    if config.export_dir:
      # Refused now, not after training: a non-empty export dir, or one that
      # holds the workdir (training fills it, so the export would find it full).
      export.check_export_dir(config.export_dir)
      export_dir, own_dir = os.path.abspath(config.export_dir), os.path.abspath(config.workdir)
      if os.path.commonpath([export_dir, own_dir]) == export_dir:
        raise UserError(f"--export_dir={config.export_dir} holds --workdir={config.workdir}; "
                        "export to a directory of its own (e.g. WORKDIR/export)")
    prepare_workdir(config)

  splits = datasets.load_splits(config)
  config_lib.check_batch_fits(config, {"train": len(splits.train.labels)})
  replicas = strategy.num_replicas_in_sync
  print(f"Model {config.model}, preset {config.preset}: global batch {config.batch_size} "
        f"= {replicas} replica(s) x {per_replica_batch}, {len(splits.train.labels)} "
        f"training examples")

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
  trainer = trainer_lib.Trainer(config, strategy, model, optimizer)
  xla = "off"
  if config.jit_compile:
    xla = "on (whole loop)" if trainer.loop_in_xla else "on (forward and backward)"
  print(f"Strategy {type(strategy).__name__}; dtype policy {policy} (compute "
        f"{model.dtype_policy.compute_dtype}, variables {model.dtype_policy.variable_dtype}"
        f"{', loss scaling' if policy == 'mixed_float16' else ''}); XLA {xla}")

  # Every worker restores the chief's newest checkpoint (the workdir is shared)
  # and saves to its own directory, of which only the chief's is kept.
  checkpointer = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"), config.max_to_keep,
      restore_directory=os.path.join(config.workdir, "checkpoints"),
      model=model, optimizer=optimizer)
  restored = checkpointer.restore_or_initialize()
  step = int(optimizer.iterations.numpy())
  if restored:
    print(f"Resumed from {restored} at step {step}")
  if chief:
    write_json(os.path.join(workdir, "config.json"), config.to_dict())

  # The input position is step * global batch: the step is the whole input
  # state, so a checkpoint resumes under any strategy and replica count
  # (a distributed iterator cannot be checkpointed anyway).
  run_chunk = trainer.chunk_runner(splits.train)
  # Evaluation batches may be short (every example counts once), so the
  # per-replica share is rounded up rather than required to divide evenly.
  eval_batch = -(-config.eval_batch_size // replicas)
  eval_data = {
      name: strategy.distribute_datasets_from_function(
          lambda ctx, split=split: datasets.eval_dataset(
              split, batch_size=eval_batch, input_context=ctx))
      for name, split in splits._asdict().items()
      if len(split.labels) and name in config.eval_splits.split(",")
  }
  summaries = summaries_lib.Summaries(workdir, enabled=chief and config.summaries,
                                      histogram_every=config.histogram_every,
                                      profile_steps=config.profile_steps)
  summaries.run_start(step, config, model, splits.train, sys.argv)

  def evaluate_all():
    results = {}
    for name, data in eval_data.items():
      results[name] = trainer.evaluate(data)
      print(format_eval(name, results[name]))
      summaries.eval_scalars(step, name, results[name])
    return results

  def stop_if_preempted():
    if preemption.requested:
      progress.clear()
      summaries.flush()
      print(f"Stopped by {preemption.signal_name} at step {step}: saved "
            f"{checkpointer.save(step)}; run the same command again to resume", flush=True)
      raise Preempted(preemption.signum)

  progress = ProgressBar(config.max_steps)
  start_step = step
  # Since the last log line: steps, their summed loss and accuracy, and the time
  # spent in training chunks only (not in evaluation or saving).
  window_steps, window_loss, window_accuracy, window_seconds = 0, 0.0, 0.0, 0.0
  while step < config.max_steps:
    stop_if_preempted()
    num_steps = next_stop(step, config, summaries.stops(step)) - step
    chunk_start = time.time()
    with summaries.train_chunk(step, num_steps):
      out = run_chunk(tf.constant(num_steps, tf.int64))
    step = int(optimizer.iterations.numpy())  # Waits for the chunk to finish.
    window_seconds += time.time() - chunk_start
    if int(out["nonfinite_step"]) >= 0:
      progress.clear()
      raise UserError(f"loss is not finite at step {int(out['nonfinite_step'])}; stopped "
                      f"without saving; the last good checkpoint is "
                      f"{checkpointer.latest or 'none'}")
    chunk_steps = int(out["steps"])
    window_steps += chunk_steps
    window_loss += float(out["loss"]) * chunk_steps
    window_accuracy += float(out["accuracy"]) * chunk_steps
    summaries.model_state(step, model)
    progress.update(step)
    if step % config.log_every == 0 or step == config.max_steps:
      progress.clear()
      print(f"Step {step}: loss = {window_loss / window_steps:.2f} "
            f"({window_seconds / window_steps:.4f} sec)")
      summaries.train_scalars(step, {
          "loss": window_loss / window_steps, "accuracy": window_accuracy / window_steps,
          "gradient_norm": out["gradient_norm"],
          "learning_rate": optimizer.learning_rate,
          "examples_per_sec": window_steps * config.batch_size / max(window_seconds, 1e-9)})
      window_steps, window_loss, window_accuracy, window_seconds = 0, 0.0, 0.0, 0.0
    if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
      progress.clear()
      evaluate_all()
    if step % config.checkpoint_every == 0 or step == config.max_steps:
      checkpointer.save(step)
  progress.clear()
  stop_if_preempted()  # A signal during the last chunk: stop before the final evaluation.

  metrics = evaluate_all()
  if summaries.enabled:
    # The test-set pictures take one more pass over it: only if it was evaluated.
    predicted = trainer.predict_classes(datasets.eval_dataset(
        splits.test, batch_size=config.eval_batch_size)) if "test" in metrics else None
    summaries.run_end(step, metrics, model, splits.test, predicted)
  summaries.flush()
  digest = weights_digest(model)
  print(f"Weights SHA-256: {digest}")
  results = {
      "model": config.model,
      "preset": config.preset,
      "steps": step,
      "wall_seconds": round(time.time() - start_time, 3),
      "metrics": metrics,
      "weights_sha256": digest,
      "config": config.to_dict(),
  }
  results_path = os.path.join(workdir, "results.json")
  # A re-run of a finished run trains nothing: keep the results (and wall time)
  # of the run that did the training.
  if chief and (step > start_step or not os.path.exists(results_path)):
    write_json(results_path, results)
    if config.export_dir:
      export.export_model(model, config, config.export_dir)
      print(f"Exported the SavedModel to {config.export_dir}")
  return results
