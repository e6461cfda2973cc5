"""Which tf.distribute strategy runs the step, and who is the chief."""

import json
import os

import tensorflow as tf

from mnist_tf2 import cluster as cluster_lib
from mnist_tf2 import devices
from mnist_tf2 import hardware
from mnist_tf2.errors import UserError


def read_tf_config() -> dict:
  """Returns the TF_CONFIG cluster spec, or raises a one-line UserError.

  TF_CONFIG is `{"cluster": {"worker": ["host:port", ...], ["chief": [...]]},
  "task": {"type": "worker", "index": i}}`, the same on every machine except
  for `task`. MultiWorkerMirroredStrategy reads it itself; checking it first
  turns a typo into one line instead of a hang or a stack trace.
  """
  text = os.environ.get("TF_CONFIG", "")
  if not text.strip():
    raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                    "(the cluster spec and this worker's task)")
  try:
    tf_config = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"TF_CONFIG is not valid JSON: {e}") from None
  cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
  if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
    raise UserError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}')
  for job, addresses in cluster.items():
    if job not in ("chief", "worker"):
      raise UserError(f"TF_CONFIG cluster job {job!r} is not supported; use chief and worker")
    if (not isinstance(addresses, list)
        or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
      raise UserError(f"TF_CONFIG cluster {job!r} must be a list of \"host:port\" strings, "
                      f"got {addresses!r}")
  if len(cluster.get("chief", [])) > 1:
    raise UserError("TF_CONFIG cluster may have at most one chief")
  task = tf_config.get("task")
  if not isinstance(task, dict) or task.get("type") not in cluster:
    raise UserError(f'TF_CONFIG needs "task": {{"type": one of {sorted(cluster)}, '
                    f'"index": i}}, got {task!r}')
  index = task.get("index")
  if (not isinstance(index, int) or isinstance(index, bool)
      or not 0 <= index < len(cluster[task["type"]])):
    raise UserError(f"TF_CONFIG task index {index!r} is not in 0..{len(cluster[task['type']]) - 1} "
                    f"for the {len(cluster[task['type']])} {task['type']} task(s)")
  return tf_config


def _tpu_strategy(config) -> tf.distribute.Strategy:
  # Untested here (no TPU): the standard resolver -> connect -> initialise dance.
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def _mirrored_strategy(config, device_names) -> tf.distribute.Strategy:
  # With no GPUs, mirror over the (logical) CPU devices, so --num_cpu_devices=2
  # gives two replicas.
  if not device_names:
    found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    device_names = [d.name for d in found]
  return tf.distribute.MirroredStrategy(device_names)


def _one_device_strategy(config, device_names) -> tf.distribute.Strategy:
  if not device_names:
    gpus = tf.config.list_logical_devices("GPU")
    device_names = [gpus[0].name if gpus else "/cpu:0"]
  return tf.distribute.OneDeviceStrategy(device_names[0])


def _multi_worker_strategy(config, device_names) -> tf.distribute.Strategy:
  # cluster.py: bounded waits for the other workers, and checks that they match.
  # Each worker takes all its visible GPUs (--devices hid the others) or, with
  # none, its /cpu:0; MultiWorkerMirroredStrategy has no device list of its own.
  del device_names
  return cluster_lib.multi_worker_strategy(config, read_tf_config())


# --strategy name -> constructor(config, TensorFlow's names of the --devices).
STRATEGIES = {
    "default": lambda config, device_names: tf.distribute.get_strategy(),
    "one_device": _one_device_strategy,
    "mirrored": _mirrored_strategy,
    "multi_worker": _multi_worker_strategy,
    "tpu": lambda config, device_names: _tpu_strategy(config),
}


def create_strategy(config) -> tf.distribute.Strategy:
  """Sets up the devices and returns the strategy named by `config.strategy`.

  Must run before TensorFlow initialises its runtime: it splits the CPU
  (--num_cpu_devices), checks that the --devices exist, hides the GPUs not
  chosen, sets --gpu_memory_growth and --log_device_placement. `auto` is
  one_device for one --devices entry and mirrored for several; without
  --devices, mirrored when more than one GPU is visible, else default.

  Raises:
    UserError: an unknown strategy, or --devices that do not exist or that
      the strategy cannot use; one line, before any heavy work.
  """
  chosen = devices.parse(config.devices)
  devices.check_strategy(chosen, config.strategy)
  devices.split_cpu(config.num_cpu_devices)
  devices.check_exist(chosen)
  devices.configure_gpus(chosen, config.gpu_memory_growth)
  devices.set_log_device_placement(config.log_device_placement)
  name = config.strategy
  if name == "auto" and chosen:
    name = "one_device" if len(chosen) == 1 else "mirrored"
  elif name == "auto":
    name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
  if name not in STRATEGIES:
    raise UserError(f"unknown --strategy={name!r}")
  return STRATEGIES[name](config, devices.tensorflow_names(chosen))


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
  """The share of each replica; refuses a global batch the replicas cannot split evenly."""
  if global_batch_size % num_replicas:
    raise UserError(f"--batch_size={global_batch_size} is the global batch and must be "
                    f"divisible by the {num_replicas} replicas")
  return global_batch_size // num_replicas


def precision_policy(config) -> str:
  """The Keras dtype policy: float32, or mixed_float16 on GPU / mixed_bfloat16 elsewhere.

  GPUs compute fastest in float16 (which needs loss scaling); CPUs and TPUs
  have bfloat16, whose float32-sized exponent needs none.
  With --auto_mixed_precision, a CPU without bfloat16 units (hardware.bf16_units)
  stays in float32.
  """
  if not (config.mixed_precision or config.auto_mixed_precision):
    return "float32"
  chosen = devices.parse(config.devices)
  on_gpu = (chosen[0].startswith("/gpu") if chosen
            else bool(tf.config.list_logical_devices("GPU")))
  if config.strategy != "tpu" and on_gpu:
    return "mixed_float16"
  if config.mixed_precision or config.strategy == "tpu" or hardware.bf16_units():
    return "mixed_bfloat16"
  return "float32"


def precision_note(config) -> str:
  """Why --auto_mixed_precision chose as it did, for the run's log ("" without it)."""
  if not config.auto_mixed_precision or config.mixed_precision:
    return ""
  if precision_policy(config) == "float32":
    return " (--auto_mixed_precision: this CPU has no bfloat16 units)"
  units = hardware.bf16_units()
  return f" (--auto_mixed_precision{': bfloat16 units ' + units if units else ''})"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that owns the workdir (the only one, off multi-worker).

  That is the "chief" task if the cluster has one, else worker 0.
  """
  return strategy.extended.should_checkpoint
