"""Resuming a run whose flags differ from those it was started with (docs/RESUMING.md).

What a resumed run continues, and what it is told:

* the input: with the next unread example of the stream, whatever the batch
  size (the checkpoint counts the examples read: `examples_consumed`);
* the learning rate: `continue_schedule`, with one line saying what it does;
* a run with nothing left to train changes nothing in its workdir (loop.py),
  and one past its --max_steps is refused (`check_steps`).

Another dataset, seed or model shape is refused before anything is read
(`workdir.prepare`).
"""

import os

import tensorflow as tf

from mnist_tf2 import optimizers
from mnist_tf2.errors import UserError

# Checkpoint entries that checkpoints written before they existed lack: such a
# checkpoint is restored without them (see `input_start` for the fallback).
OPTIONAL_ENTRIES = ("examples_consumed", "lr_restart")
# The config fields the learning-rate schedule is built from.
SCHEDULE_FIELDS = ("learning_rate", "lr_schedule", "warmup_steps", "max_steps")


def lr_restart_variable() -> tf.Variable:
  """[step, learning rate] where the schedule was last continued (step -1: never)."""
  return tf.Variable([-1.0, 0.0], dtype=tf.float64, trainable=False, name="lr_restart")


def check_steps(config, step, workdir) -> None:
  """Refuses a --max_steps below the step the workdir's run has reached."""
  if step > config.max_steps:
    raise UserError(f"--workdir={workdir} holds a run at step {step}, past --max_steps="
                    f"{config.max_steps}; nothing was changed: use a new --workdir for a "
                    f"{config.max_steps}-step run (evaluate or export this one with "
                    "mnist_tf2.evaluate / mnist_tf2.export)")


def finished(config, step, workdir) -> bool:
  """Whether the run is at --max_steps and has written its results: nothing to do."""
  return step == config.max_steps and os.path.exists(os.path.join(workdir, "results.json"))


def input_start(config, saved, step, examples_consumed, restored_from_old) -> str | None:
  """Sets where the input continues; returns a line if the batch size changed.

  Args:
    config: this run's Config.
    saved: the config.json dict of the run being resumed (or None).
    step: the step restored.
    examples_consumed: the int64 variable the checkpoint restored (or not).
    restored_from_old: the checkpoint predates `examples_consumed`: every
      step then read one batch of config.json's --batch_size.
  """
  previous_batch = (saved or {}).get("batch_size", config.batch_size)
  if restored_from_old:
    examples_consumed.assign(step * previous_batch)
  if previous_batch == config.batch_size:
    return None
  consumed = int(examples_consumed.numpy())
  return (f"Input: {consumed} examples read at --batch_size={previous_batch}; continuing "
          f"with the next unread one, {config.batch_size} a step")


def continue_schedule(config, saved, step, optimizer, lr_restart) -> str:
  """Applies the learning-rate rule of a resumed run; returns the line saying what it does.

  The rule: unchanged schedule flags continue the schedule exactly. If only
  --max_steps changed (and --warmup_steps, once the warm-up is over), a decaying schedule continues from the rate the next
  step would have had and decays, in the same shape, to 0 at the new
  --max_steps (no jump); if that rate is already 0 (the decay had ended), it
  restarts from the peak --learning_rate (a warm restart, as in SGDR). During
  the warm-up, or with other schedule flags changed, the new flags' schedule
  applies from this step as if the run had started with it.
  """
  schedule = optimizers.schedule_of(optimizer)
  restart_step, restart_value = lr_restart.numpy()
  saved = saved or {}
  changed = [name for name in SCHEDULE_FIELDS
             if name in saved and saved[name] != getattr(config, name)]
  if not changed:
    what = "continues its schedule"
    if restart_step >= 0:
      schedule.restart_at(int(restart_step), float(restart_value))
  elif ("max_steps" in changed and set(changed) <= {"max_steps", "warmup_steps"}
        and config.lr_schedule != "constant" and step >= saved["warmup_steps"]):
    # (A preset's warm-up scales with --max_steps; once it is over, it no longer matters.)
    old = optimizers.WarmupSchedule(saved["learning_rate"], saved["max_steps"],
                                    saved["warmup_steps"], saved["lr_schedule"])
    if restart_step >= 0:
      old.restart_at(int(restart_step), float(restart_value))
    reached = float(old(step))
    if reached > 0:
      what = ("continues from the rate reached, decaying to the new --max_steps "
              f"(was {saved['max_steps']})")
    else:
      what = f"the {config.lr_schedule} decay had ended: warm restart from the peak"
    value = reached if reached > 0 else config.learning_rate
    schedule.restart_at(step, value)
    lr_restart.assign([step, value])
  else:
    was = float(optimizers.WarmupSchedule(
        saved.get("learning_rate", config.learning_rate), saved.get("max_steps", config.max_steps),
        saved.get("warmup_steps", config.warmup_steps),
        saved.get("lr_schedule", config.lr_schedule))(step))
    now = float(schedule(step))
    what = f"the schedule of the new {', '.join(f'--{n}' for n in changed)} from here"
    if abs(now - was) > 1e-6 * max(now, was):
      what += f" (the old one was at {was:.3g})"
    lr_restart.assign([-1.0, 0.0])
  return (f"Learning rate: {what}: {float(schedule(step)):.3g} at step {step + 1}, "
          f"{float(schedule(config.max_steps - 1)):.3g} at step {config.max_steps}")
