"""The outer loop: what happens at which step of a training run.

`train_and_evaluate(config)` is the schedule, in a dozen lines; the
`Controller` does each job (train a chunk, log, evaluate, save, finish) and
restores the newest checkpoint in its constructor. Everything is keyed on the
global step, `optimizer.iterations`, so a resumed run picks up the schedule
where the interrupted one left it. The train step itself is
`trainer.Trainer.train_step`.
"""

import hashlib
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
import tqdm

from mnist_tf2 import checkpoints
from mnist_tf2 import cluster
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import devices
from mnist_tf2 import distribute
from mnist_tf2 import export
from mnist_tf2 import hardware
from mnist_tf2 import lock
from mnist_tf2 import resume
from mnist_tf2 import summaries as summaries_lib
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2 import workdir as workdir_lib
from mnist_tf2.errors import Preempted
from mnist_tf2.errors import UserError
from mnist_tf2.evaluate import Evaluator
from mnist_tf2.metrics import Metrics
from mnist_tf2.metrics import format_eval


def train_and_evaluate(config) -> dict:
  """Trains `config.model` to `config.max_steps` and evaluates it.

  Resumes from the newest checkpoint in the workdir, if there is one. SIGTERM
  or SIGINT saves a checkpoint at the step reached and raises `Preempted` (on a
  multi-worker run, every worker at one step: cluster.MultiWorkerStop). The
  workdir is locked for the run (lock.WorkdirLock). A lost worker raises a
  one-line UserError (cluster.lost_workers_reported).

  Returns:
    The results dict also written to `<workdir>/results.json`.
  """
  start_time = time.time()
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)
  strategy = distribute.create_strategy(config)
  with (cluster.lost_workers_reported(config),
        workdir_lib.worker_dir(config.workdir, strategy) as workdir,
        lock.WorkdirLock(config.workdir) as workdir_lock,
        checkpoints.PreemptionWatcher() as preemption):
    controller = Controller(config, strategy, workdir, preemption, workdir_lock)
    while controller.step < config.max_steps:
      controller.stop_if_preempted()
      step = controller.train(until=next_stop(controller.step, config))
      if due(step, config.histogram_every):
        controller.summaries.model_state(step, controller.model)
      if due(step, config.log_every) or step == config.max_steps:
        controller.log()
      if due(step, config.eval_every) and step < config.max_steps:
        controller.evaluate(final=False)
      if due(step, config.checkpoint_every) or step == config.max_steps:
        controller.save()
    controller.stop_if_preempted()  # A signal in the last chunk: stop before the final evaluation.
    return controller.finish(start_time)


def due(step, every) -> bool:
  """Whether something done every `every` steps falls on `step` (never if `every` is 0)."""
  return bool(every) and step % every == 0


def next_stop(step, config) -> int:
  """The next step at which the loop must leave the compiled chunk: the end, a
  full chunk, or the next step something is `due` (log, evaluation, checkpoint,
  histograms, the start or end of the profiled steps)."""
  stops = [config.max_steps, step + config.steps_per_loop]
  for every in (config.log_every, config.eval_every, config.checkpoint_every,
                config.histogram_every):
    if every:
      stops.append((step // every + 1) * every)
  stops.extend(s for s in config_lib.profile_range(config.profile_steps) or () if s > step)
  return min(stops)


def progress_bar(total, initial, stream=None) -> tqdm.tqdm:
  """A bar of the steps on a terminal; silent when `stream` (stdout) is a log file or CI."""
  # Updated once a chunk, rarely enough to redraw every time (mininterval=0).
  return tqdm.tqdm(total=total, initial=initial, file=stream or sys.stdout, disable=None,
                   leave=False, unit="step", mininterval=0)


def weights_digest(model) -> str:
  """SHA-256 of the model's weights: equal on every worker, and across identical runs."""
  digest = hashlib.sha256()
  for variable in model.weights:
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()


class Controller:
  """One training run's jobs around the train step; restores in its constructor.

  Args:
    config: the resolved Config.
    strategy: the tf.distribute strategy.
    workdir: the directory this worker writes to (`workdir.worker_dir`).
    preemption: a `checkpoints.PreemptionWatcher`.
    workdir_lock: a `lock.WorkdirLock`, acquired here by the chief.
  """

  def __init__(self, config, strategy, workdir, preemption, workdir_lock):
    self.config, self.strategy, self.workdir = config, strategy, workdir
    self.preemption = preemption
    self.chief = distribute.is_chief(strategy)
    per_replica_batch = distribute.per_replica_batch_size(config.batch_size,
                                                          strategy.num_replicas_in_sync)
    if self.chief:
      if config.export_dir:  # Refused now, not after training.
        export.check_export_dir(config.export_dir)
        workdir_lib.check_export_dir_apart(config.export_dir, config.workdir)
      workdir_lib.prepare(config)
      workdir_lock.acquire()
    self.splits = datasets.load_splits(config)
    config_lib.check_batch_fits(config, {"train": len(self.splits.train.labels)})
    print(f"Model {config.model}, preset {config.preset}: global batch {config.batch_size} "
          f"= {strategy.num_replicas_in_sync} replica(s) x {per_replica_batch}, "
          f"{len(self.splits.train.labels)} training examples")
    print(devices.describe(strategy, devices.parse(config.devices)), flush=True)
    self.model, self.optimizer = trainer_lib.build_model_and_optimizer(config, strategy)
    self.trainer = trainer_lib.create_trainer(config, strategy, self.model, self.optimizer)
    self._print_numerics()
    self._restore()
    self.multi_worker_stop = cluster.MultiWorkerStop(
        strategy, preemption, self._save_to_stop,
        os.path.join(config.workdir, "checkpoints"),
        os.path.join(workdir, "checkpoints", "empty")) if config.strategy == "multi_worker" else None
    self.inputs = self.trainer.inputs(self.splits.train)  # After the restore: see there.
    self.evaluator = Evaluator(self.model, strategy)
    self.eval_data = self._eval_datasets()
    # A finished run re-run only evaluates (and exports): its record stays as it is.
    self.summaries = summaries_lib.Summaries(workdir, enabled=(self.chief and config.summaries
                                                               and not self.finished),
                                             histogram_every=config.histogram_every,
                                             profile_steps=config.profile_steps)
    self.summaries.run_start(self.step, config, self.model, self.splits.train, sys.argv)
    if due(self.step, config.histogram_every):
      self.summaries.model_state(self.step, self.model)
    # What the next log line reports: the steps since the last one, and the
    # time spent in training chunks only (not in evaluation or saving).
    self.window, self.window_seconds, self.gradient_norm = Metrics(), 0.0, 0.0
    self.progress = progress_bar(config.max_steps, self.step)

  def _print_numerics(self):
    policy = self.model.dtype_policy
    xla = self.trainer.xla if self.config.jit_compile else "off (--jit_compile=false)"
    loss_scaling = ", loss scaling" if self.trainer.loss_scaling else ""
    onednn = {True: "; oneDNN on", False: "; oneDNN off", None: ""}[hardware.onednn_enabled()]
    print(f"Strategy {type(self.strategy).__name__}; dtype policy {policy.name} (compute "
          f"{policy.compute_dtype}, variables {policy.variable_dtype}{loss_scaling})"
          f"{distribute.precision_note(self.config)}; XLA {xla}{onednn}")

  def _restore(self):
    # Every worker restores the chief's newest checkpoint (the workdir is
    # shared) and saves to its own directory, of which only the chief's is kept.
    config = self.config
    saved = workdir_lib.saved_config(config.workdir)  # The resumed run's flags.
    lr_restart = resume.lr_restart_variable()
    self.checkpointer = checkpoints.Checkpointer(
        os.path.join(self.workdir, "checkpoints"), config.max_to_keep,
        restore_directory=os.path.join(config.workdir, "checkpoints"),
        optional=resume.OPTIONAL_ENTRIES, model=self.model, optimizer=self.optimizer,
        examples_consumed=self.trainer.examples_consumed, lr_restart=lr_restart)
    restored = self.checkpointer.restore_or_initialize()
    self.step = self.start_step = int(self.optimizer.iterations.numpy())
    self.finished = restored and resume.finished(config, self.step, config.workdir)
    if restored:
      print(f"Resumed from {restored} at step {self.step}")
      resume.check_steps(config, self.step, config.workdir)
      if self.finished:
        print(f"The run finished at step {self.step} ({config.workdir}/results.json): "
              "evaluating it; nothing in the workdir is changed")
        return
      for line in (resume.input_start(config, saved, self.step,
                                      self.trainer.examples_consumed,
                                      "examples_consumed" in self.checkpointer.missing),
                   resume.continue_schedule(config, saved, self.step, self.optimizer,
                                            lr_restart)):
        if line:
          print(line)
    if self.chief:
      workdir_lib.write_json(workdir_lib.config_path(self.workdir), config.to_dict())

  def _eval_datasets(self):
    # Evaluation batches may be short (every example counts once), so the
    # per-replica share is rounded up rather than required to divide evenly.
    batch = -(-self.config.eval_batch_size // self.strategy.num_replicas_in_sync)
    return {
        name: self.strategy.distribute_datasets_from_function(
            lambda ctx, split=split: datasets.eval_dataset(
                split, batch_size=batch, input_context=ctx))
        for name, split in self.splits._asdict().items()
        if len(split.labels) and name in self.config.eval_splits.split(",")
    }

  def train(self, until) -> int:
    """Runs the steps up to `until` in one compiled call; returns the step reached."""
    num_steps = until - self.step
    chunk_start = time.time()
    with self.summaries.train_chunk(self.step, num_steps):
      out = self.trainer.train(self.trainer.chunk_inputs(self.inputs, num_steps),
                               tf.constant(num_steps, tf.int64))
    self.step = int(self.optimizer.iterations.numpy())  # Waits for the chunk to finish.
    self.window_seconds += time.time() - chunk_start
    if int(out["nonfinite_step"]) >= 0:
      self.progress.clear()
      raise UserError(f"loss is not finite at step {int(out['nonfinite_step'])}; stopped "
                      f"without saving; the last good checkpoint is "
                      f"{self.checkpointer.latest or 'none'}")
    self.window.update(out)
    self.gradient_norm = out["gradient_norm"]
    self.progress.update(self.step - self.progress.n)
    return self.step

  def log(self):
    """The tutorial's `Step N: loss = ...` line and the training scalars of the window."""
    self.progress.clear()
    window, steps = self.window, self.window.loss_count  # One loss term a step.
    print(f"Step {self.step}: loss = {window.loss:.2f} ({self.window_seconds / steps:.4f} sec)")
    self.summaries.train_scalars(self.step, {
        "loss": window.loss, "accuracy": window.accuracy,
        "gradient_norm": self.gradient_norm,
        "learning_rate": self.optimizer.learning_rate,
        "examples_per_sec": window.num_examples / max(self.window_seconds, 1e-9)})
    self.window, self.window_seconds = Metrics(), 0.0

  def evaluate(self, final=True) -> dict:
    """Evaluates every split of --eval_splits; returns {split: Metrics}.

    Before the final evaluation, not the training split: the costliest pass,
    and its curve is the training minibatches'.
    """
    self.progress.clear()
    results = {}
    for name, data in self.eval_data.items():
      if name == "train" and not final:
        continue
      results[name] = self.evaluator(data)
      print(format_eval(name, results[name].result()))
      self.summaries.eval_scalars(self.step, name, results[name])
    return results

  def save(self):
    self.checkpointer.save(self.step)

  def _save_to_stop(self, step):
    self.progress.clear()
    self.summaries.flush()
    return self.checkpointer.save(step)

  def stop_if_preempted(self):
    """After a SIGTERM/SIGINT: saves a checkpoint at this step and raises `Preempted`."""
    if self.multi_worker_stop:  # All workers, at the step they agree on.
      self.multi_worker_stop.check(self.step)
    elif self.preemption.requested:
      self.progress.clear()
      self.summaries.flush()
      print(f"Stopped by {self.preemption.signal_name} at step {self.step}: saved "
            f"{self.checkpointer.save(self.step)}; run the same command again to resume",
            flush=True)
      raise Preempted(self.preemption.signum)

  def finish(self, start_time) -> dict:
    """The final evaluation, summaries, results.json and export; returns the results."""
    self.progress.close()
    metrics = self.evaluate()
    self.summaries.run_end(self.step, metrics, self.model, self.splits.test,
                           self.config.eval_batch_size)
    self.summaries.flush()
    digest = weights_digest(self.model)
    print(f"Weights SHA-256: {digest}")
    results = {
        "model": self.config.model,
        "preset": self.config.preset,
        "steps": self.step,
        "wall_seconds": round(time.time() - start_time, 3),
        # What the run computed in (--mixed_precision's policy depends on the device).
        "dtype_policy": self.model.dtype_policy.name,
        "metrics": {name: split_metrics.result() for name, split_metrics in metrics.items()},
        "weights_sha256": digest,
        "config": self.config.to_dict(),
    }
    results_path = os.path.join(self.workdir, "results.json")
    # A re-run of a finished run trains nothing: keep the results (and wall time)
    # of the run that did the training.
    if self.chief and (self.step > self.start_step or not os.path.exists(results_path)):
      workdir_lib.write_json(results_path, results)
    if self.chief and self.config.export_dir:
      export.export_model(self.model, self.config, self.config.export_dir)
      print(f"Exported the SavedModel to {self.config.export_dir}")
    return results
