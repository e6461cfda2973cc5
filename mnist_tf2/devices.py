"""Which devices a run uses: their names, checks, visibility, memory and placement logs.

The TF2 form of the tutorials' "Using GPUs" guide. Device names are the
short ones TensorFlow accepts everywhere, `/cpu:0`, `/gpu:1` (the long form
`/device:GPU:1` is the same device). Everything here that configures devices
must run before TensorFlow initialises its runtime (the first op, or the
first listing of logical devices), which `distribute.create_strategy` does.

Importing this module does not import TensorFlow (`config` validates
`--devices` with `parse` before TensorFlow is loaded).
"""

import re

from mnist_tf2.errors import UserError

# /cpu:1, /gpu:0, /device:GPU:1, cpu:1, GPU:1 (case-insensitive).
_NAME = re.compile(r"/?(?:device:)?(cpu|gpu):(\d+)", re.IGNORECASE)


def parse(text: str) -> tuple[str, ...]:
  """Parses --devices: "/gpu:0,/device:GPU:1" -> ("/gpu:0", "/gpu:1").

  Args:
    text: comma-separated device names; "" means "not chosen".

  Returns:
    The canonical short names, in the order given; () for "".

  Raises:
    UserError: a name that is not a local CPU or GPU, a repeat, or CPUs and
      GPUs mixed (the replicas must be alike: the slowest sets the pace).
  """
  if not text.strip():
    return ()
  names = []
  for part in text.split(","):
    match = _NAME.fullmatch(part.strip())
    if not match:
      raise UserError(f"--devices entry {part.strip()!r} is not a device name like /cpu:0, "
                      "/gpu:1 or /device:GPU:1")
    names.append(f"/{match.group(1).lower()}:{int(match.group(2))}")
  if len(set(names)) != len(names):
    raise UserError(f"--devices={text} names a device twice")
  if len({name[:4] for name in names}) > 1:
    raise UserError(f"--devices={text} mixes CPUs and GPUs; choose devices of one kind")
  return tuple(names)


def check_strategy(devices: tuple[str, ...], strategy: str) -> None:
  """Refuses --devices that the --strategy cannot honour (before any TensorFlow work)."""
  if not devices:
    return
  if strategy == "default":
    raise UserError("--strategy=default leaves placement to TensorFlow; with --devices use "
                    "--strategy=one_device, mirrored or auto")
  if strategy == "tpu":
    raise UserError("--devices names CPUs and GPUs; --strategy=tpu runs on the TPU's cores")
  if strategy == "one_device" and len(devices) > 1:
    raise UserError(f"--strategy=one_device runs one replica but --devices names "
                    f"{len(devices)}; use --strategy=mirrored (or auto)")
  if strategy == "multi_worker" and devices[0].startswith("/cpu") and devices != ("/cpu:0",):
    # MultiWorkerMirroredStrategy takes every visible GPU of a worker, or its
    # first CPU when it has none: GPUs can be chosen (by hiding the others),
    # CPUs cannot.
    raise UserError("--strategy=multi_worker runs one replica per worker on /cpu:0 when there "
                    "is no GPU; --devices can only choose GPUs there")


def available() -> list[str]:
  """The local devices a run can use: ["/cpu:0", ..., "/gpu:0", ...].

  Reads the physical GPUs and the CPU's logical split (see `split_cpu`)
  without initialising the runtime, so GPU visibility can still be changed.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  num_cpus = len(tf.config.get_logical_device_configuration(cpu) or [cpu])
  gpus = tf.config.list_physical_devices("GPU")
  return [f"/cpu:{i}" for i in range(num_cpus)] + [f"/gpu:{i}" for i in range(len(gpus))]


def check_exist(devices: tuple[str, ...]) -> None:
  """Raises a one-line UserError naming the devices that exist, if one of `devices` does not."""
  present = available()
  missing = [name for name in devices if name not in present]
  if not missing:
    return
  if missing[0].startswith("/gpu") and not any(d.startswith("/gpu") for d in present):
    raise UserError(f"--devices={','.join(devices)}: this machine has no GPU that TensorFlow "
                    f"can use; its devices are {', '.join(present)}")
  hint = ""
  if missing[0].startswith("/cpu") and "/cpu:1" not in present:
    hint = " (--num_cpu_devices=N splits the CPU into N logical devices)"
  raise UserError(f"--devices: no device {', '.join(missing)} here; the devices are "
                  f"{', '.join(present)}{hint}")


def split_cpu(num_devices: int) -> None:
  """Splits the physical CPU into `num_devices` logical devices.

  This lets MirroredStrategy run (and be tested) without GPUs. It must happen
  before TensorFlow initialises its devices, i.e. before the first op runs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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


def configure_gpus(devices: tuple[str, ...], memory_growth: bool) -> None:
  """Hides the GPUs not in `devices` (all of them if it names CPUs); sets memory growth.

  TensorFlow reserves nearly all the memory of every GPU it can see, so on a
  shared machine the GPUs not chosen must be hidden, not just left unused.
  The visible ones are then renumbered from 0 in TensorFlow's own names
  (see `tensorflow_names`). Memory growth makes a run allocate as it goes
  instead, so two runs can share one GPU. Without GPUs this does nothing.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return
  visible = gpus
  if devices:
    visible = [gpus[i] for i in sorted(_gpu_indices(devices))]
  try:
    if devices:
      tf.config.set_visible_devices(visible, "GPU")
    for gpu in visible if memory_growth else []:
      tf.config.experimental.set_memory_growth(gpu, True)
  except RuntimeError:
    # The runtime is already up (a second run in one process): fine if it
    # already matches, otherwise the request cannot be honoured.
    if (tf.config.get_visible_devices("GPU") != visible
        or memory_growth and not all(tf.config.experimental.get_memory_growth(g)
                                     for g in visible)):
      raise UserError("--devices and --gpu_memory_growth must be set before TensorFlow "
                      "starts; this process has already initialised its GPUs") from None


def _gpu_indices(devices: tuple[str, ...]) -> list[int]:
  return [int(name.rpartition(":")[2]) for name in devices if name.startswith("/gpu")]


def tensorflow_names(devices: tuple[str, ...]) -> list[str]:
  """Our names -> TensorFlow's once the GPUs not chosen are hidden: ("/gpu:2",) -> ["/gpu:0"]."""
  visible = sorted(_gpu_indices(devices))
  return [f"/gpu:{visible.index(int(name.rpartition(':')[2]))}" if name.startswith("/gpu")
          else name for name in devices]


LOG_DEVICE_PLACEMENT_HELP = ("Log the device each TensorFlow op runs on "
                             "(tf.debugging.set_log_device_placement; TensorFlow's own lines, "
                             "thousands for a short run).")


def define_log_device_placement_flag() -> None:
  """--log_device_placement for the commands without a Config (train has the field)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("log_device_placement", False, LOG_DEVICE_PLACEMENT_HELP)


def set_log_device_placement(enabled: bool) -> None:
  """Makes TensorFlow log the device of every op it places (TF2's log_device_placement).

  Ops inside a tf.function (the train and eval steps) are printed to stdout as
  `name: (OpType): /job:localhost/replica:0/task:0/device:CPU:1`; eager ops
  (creating variables, for instance) go to TensorFlow's C++ INFO log on stderr
  as `Executing op VarHandleOp in device ...`. TensorFlow reads its log level
  once, when it is loaded: a command with --log_device_placement set lets that
  log through (`cli.TF_LOG_FLAGS`), since the user asked for those lines.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.debugging.set_log_device_placement(enabled)


def short_name(device: str) -> str:
  """'/job:worker/replica:0/task:1/device:GPU:0' -> '/gpu:0'."""
  match = re.search(r"device:(\w+):(\d+)$", device)
  return f"/{match.group(1).lower()}:{match.group(2)}" if match else device


def describe(strategy, devices: tuple[str, ...] = ()) -> str:
  """The start-up summary's line: 'Devices: /cpu:1 (1 replica)'.

  Args:
    strategy: the run's tf.distribute.Strategy.
    devices: what --devices chose (our names); GPUs chosen are named as given,
      with TensorFlow's renumbered names alongside when they differ.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  replicas = strategy.num_replicas_in_sync
  try:
    local = [short_name(d) for d in strategy.extended.worker_devices]
  except (RuntimeError, NotImplementedError, AttributeError):
    # The default strategy places nothing itself: TensorFlow's default device.
    local = ["/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"]
  names = ", ".join(local)
  renamed = ""
  if devices and list(devices) != tensorflow_names(devices):
    names = ", ".join(devices)
    renamed = (f"; TensorFlow calls them {', '.join(tensorflow_names(devices))}, "
               "the other GPUs being hidden")
  plural = "replica" if replicas == 1 else "replicas"
  workers = replicas // len(local)
  where = f" on each of {workers} workers" if workers > 1 else ""
  return f"Devices: {names}{where} ({replicas} {plural}{renamed})"
