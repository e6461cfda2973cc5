"""Which tf.distribute strategy runs the step, and who is the chief."""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from mnist_tf2.errors import UserError


def split_cpu(num_devices: int) -> None:
  """Splits the physical CPU into `num_devices` logical devices.

  This lets MirroredStrategy run (and be tested) without GPUs. It must happen
  before TensorFlow initialises its devices, i.e. before the first op runs.
  """
  if num_devices <= 0:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
  except RuntimeError:
    # Already initialised (a second run in the same process): keep what is there
    # if it matches, otherwise the request cannot be honoured.
    if len(tf.config.list_logical_devices("CPU")) != num_devices:
      raise UserError(f"--num_cpu_devices={num_devices} must be set before TensorFlow starts; "
                      "this process already has "
                      f"{len(tf.config.list_logical_devices('CPU'))} CPU devices") from None


def create_strategy(config) -> tf.distribute.Strategy:
  """Returns the strategy named by `config.strategy` (see the --strategy flag)."""
  split_cpu(config.num_cpu_devices)
  name = config.strategy
  gpus = tf.config.list_logical_devices("GPU")
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    # With no GPUs, mirror over the (logical) CPU devices, so --num_cpu_devices=2
    # gives two replicas.
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                      "(the cluster spec and this worker's task)")
    try:
      json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
      raise UserError(f"TF_CONFIG is not valid JSON: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    tpu = getattr(config, "tpu", "")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise UserError(f"unknown --strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that owns the workdir (the only one, off multi-worker)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  # The chief is the "chief" task if the cluster has one, else worker 0.
  return task_type == "chief" or (
      task_type == "worker" and task_id == 0
      and "chief" not in resolver.cluster_spec().as_dict())


def worker_workdir(workdir: str, strategy: tf.distribute.Strategy) -> str:
  """The directory this worker writes to.

  Every worker must take part in saving a checkpoint (the save is a collective
  op), but only the chief's copy is kept: the others write to a temporary
  directory they delete afterwards (see `cleanup_worker_workdir`), as TF's
  multi-worker guide prescribes.
  """
  if is_chief(strategy):
    return workdir
  resolver = strategy.cluster_resolver
  return tempfile.mkdtemp(prefix=f"mnist_tf2_{resolver.task_type}{resolver.task_id}_")


def cleanup_worker_workdir(path: str, workdir: str) -> None:
  if path != workdir:
    shutil.rmtree(path, ignore_errors=True)
