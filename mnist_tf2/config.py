"""The run configuration: one typed record, built from a preset plus flags.

A run's settings are resolved in three layers, later ones winning:

  1. the defaults of the `Config` dataclass below,
  2. the preset `PRESETS[--preset]` in `configs/<model>.py`,
  3. every flag given on the command line (or in a --flagfile).

Every field of `Config` is also an absl flag of the same name (see
`define_flags`), so anything can be overridden without editing a file. An
unknown preset, a wrong type or a value out of range is a `UserError` raised
before any heavy work.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import textwrap
from typing import Any

from mnist_tf2 import constants
from mnist_tf2 import devices
from mnist_tf2.devices import LOG_DEVICE_PLACEMENT_HELP
from mnist_tf2.errors import UserError


_group = ""


def _section(title: str) -> None:
  """Starts a group of fields: `--help` lists the flags in these groups, in this order."""
  global _group
  _group = title


def _field(default, help_text, **choices):
  return dataclasses.field(default=default,
                           metadata={"help": help_text, "group": _group, **choices})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Field names are the flag names."""

  _section("What to train")
  model: str = _field("cnn", "Model: softmax, mlp or cnn.", choices=("softmax", "mlp", "cnn"))
  preset: str = _field("default", "Preset in configs/<model>.py: seed, default, fast, smoke, ...")

  _section("Data")
  data_source: str = _field(
      "bundled", "Where MNIST comes from: bundled (shipped in the package), idx (--data_dir), "
      "tfds (--dataset) or fake (tiny synthetic data for tests).",
      choices=("bundled", "idx", "tfds", "fake"))
  fake_data: bool = _field(False, "The tutorial's flag: same as --data_source=fake.")
  data_dir: str = _field("", "Directory with the four MNIST IDX files (gzipped or raw), for "
                         "--data_source=idx.")
  dataset: str = _field("mnist", "TFDS dataset name for --data_source=tfds (mnist, "
                        "fashion_mnist, kmnist, ...).")
  tfds_data_dir: str = _field("", "TFDS data directory for --data_source=tfds.")
  validation_size: int = _field(5000, "Images taken from the start of the official training "
                                "set as the validation split.")
  fake_examples: int = _field(512, "Training examples of --data_source=fake.")

  _section("Model")
  hidden1: int = _field(128, "mlp: units in the first hidden layer.")
  hidden2: int = _field(32, "mlp: units in the second hidden layer.")
  dropout_rate: float = _field(0.4, "cnn: dropout rate before the logits (training only).")

  _section("Optimisation")
  optimizer: str = _field("adam", "sgd, momentum, adam or adamw.",
                          choices=("sgd", "momentum", "adam", "adamw"))
  learning_rate: float = _field(1e-3, "Peak learning rate.")
  lr_schedule: str = _field("constant", "constant, cosine (to 0) or linear (to 0), each after "
                            "--warmup_steps of linear warm-up.",
                            choices=("constant", "cosine", "linear"))
  warmup_steps: int = _field(0, "Steps of linear learning-rate warm-up from 0.")
  momentum: float = _field(0.9, "Momentum for --optimizer=momentum.")
  weight_decay: float = _field(0.0, "Decoupled weight decay (adamw) or L2-style decay "
                               "(others, through Keras' weight_decay).")
  label_smoothing: float = _field(0.0, "Label smoothing of the cross-entropy loss.")
  batch_size: int = _field(100, "Global training batch size (all replicas together). May "
                           "change on resume: the run continues with the next unread example.")
  eval_batch_size: int = _field(1000, "Batch size for evaluation.")
  max_steps: int = _field(2000, "Number of training steps to run. A resumed run may raise it: "
                          "the learning rate goes on from the rate reached (docs/RESUMING.md).")

  _section("The loop")
  steps_per_loop: int = _field(100, "Training steps run inside one tf.function call.")
  log_every: int = _field(100, "Print the 'Step N: loss = ...' line every N steps.")
  eval_every: int = _field(0, "Also evaluate every N steps (0: only at the end), for "
                          "TensorBoard's curves; the training split, the costliest pass, "
                          "only at the end.")
  eval_splits: str = _field("train,validation,test", "Comma-separated splits to evaluate: "
                            "any of train, validation, test (the 55,000-image train split "
                            "costs the most).")
  checkpoint_every: int = _field(1000, "Save a checkpoint every N steps (and at the end).")
  max_to_keep: int = _field(3, "Checkpoints kept in the workdir (at least 2).")
  seed: int = _field(0, "Seed for initialisation, shuffling and dropout.")
  deterministic: bool = _field(False, "Turn on TensorFlow op determinism (bit-identical runs).")
  workdir: str = _field("", "Where checkpoints, summaries, config.json and results.json go "
                        "(alias --train_dir; default /tmp/mnist_tf2/<model>-<preset>).")

  _section("Distribution")
  strategy: str = _field("auto", "auto, default, one_device, mirrored, multi_worker or tpu.",
                         choices=("auto", "default", "one_device", "mirrored", "multi_worker",
                                  "tpu"))
  num_cpu_devices: int = _field(0, "Split the CPU into N logical devices (0: leave as is), "
                                "so --strategy=mirrored runs N replicas without GPUs.")
  devices: str = _field("", "Comma-separated devices the replicas run on, e.g. /gpu:2 or "
                        "/gpu:0,/gpu:1 (also /device:GPU:1, /cpu:1); the GPUs not named "
                        "are hidden from TensorFlow. Empty: the --strategy's own choice. "
                        "With --strategy=auto: one_device for one, mirrored for several.")
  gpu_memory_growth: bool = _field(False, "Let TensorFlow allocate GPU memory as needed "
                                   "instead of reserving nearly all of it (so two runs "
                                   "can share a GPU).")
  log_device_placement: bool = _field(False, LOG_DEVICE_PLACEMENT_HELP)
  tpu: str = _field("", "TPU name or grpc:// address for --strategy=tpu (empty: the local "
                    "TPU VM or the one in the environment).")
  cluster_timeout: float = _field(
      60.0, "Multi-worker: seconds a worker waits for the others to start, and after "
      "which a lost (killed, vanished) worker stops the others (heartbeat timeout x 2).")
  mixed_precision: bool = _field(False, "Compute in 16-bit floats: mixed_float16 with loss "
                                 "scaling on GPU, mixed_bfloat16 on CPU/TPU.")
  auto_mixed_precision: bool = _field(False, "--mixed_precision only where it pays: on a GPU, "
                                      "a TPU or a CPU with bfloat16 units (AMX, AVX512-BF16, "
                                      "Arm BF16); float32 on other CPUs, which emulate "
                                      "bfloat16 slowly. The run prints which ran.")
  jit_compile: bool = _field(False, "Compile with XLA: on one replica without elastic "
                             "distortion (and, on a CPU, not the cnn), each chunk of "
                             "--steps_per_loop steps (batches gathered from memory and "
                             "distorted, forward, backward, update) is one XLA program; "
                             "otherwise each replica's forward and backward pass.")

  # Each strength at 0 turns its distortion off.
  _section("Data augmentation (training only)")
  augment: bool = _field(False, "Randomly distort training images (never evaluation ones) "
                         "by the --augment_* strengths below.")
  augment_shift: float = _field(2.0, "Largest random shift, pixels (each axis).")
  augment_rotation: float = _field(10.0, "Largest random rotation, degrees.")
  augment_scale: float = _field(0.1, "Largest relative change of size: zoom in [1-s, 1+s].")
  augment_elastic_alpha: float = _field(0.0, "Elastic distortion strength (Simard et al. "
                                        "2003's alpha, pixels; 0: off).")
  augment_elastic_sigma: float = _field(4.0, "Smoothness of the elastic displacement field: "
                                        "the Gaussian's sigma, pixels.")

  _section("TensorBoard")
  summaries: bool = _field(True, "Write TensorBoard summaries (false: none at all, and the "
                           "train step skips the gradient norm; e.g. to time training "
                           "without them).")
  histogram_every: int = _field(1000, "Write histograms of the weights, biases and activations "
                                "every N steps (0: never).")
  profile_steps: str = _field("", "Write a profiler trace of the steps from global step A to "
                              "B, given as A,B (e.g. 100,110; empty: none).")

  _section("Export")
  export_dir: str = _field("", "If set, export a SavedModel there at the end of training.")

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

EVAL_SPLITS = constants.SPLITS

# Largest --augment_elastic_sigma, pixels: half the image.
MAX_ELASTIC_SIGMA = 14.0

# Fields that only one model reads; setting them for another model is an error.
MODEL_ONLY_FIELDS = {"hidden1": "mlp", "hidden2": "mlp", "dropout_rate": "cnn"}
# Fields that only one data source reads; given for another source they would be
# silently ignored (--data_dir alone would train on the bundled data), so refuse.
SOURCE_ONLY_FIELDS = {"data_dir": "idx", "dataset": "tfds", "tfds_data_dir": "tfds",
                      "fake_examples": "fake"}


def configs_dir() -> pathlib.Path:
  """Where the preset files are: in the wheel, or at the top of the checkout."""
  package_dir = pathlib.Path(__file__).resolve().parent
  for candidate in (package_dir / "configs", package_dir.parent / "configs"):
    if (candidate / "cnn.py").is_file():
      return candidate
  raise UserError(f"cannot find the configs/ presets next to {package_dir}")


def load_presets(model: str) -> dict[str, dict[str, Any]]:
  """Returns `PRESETS` of configs/<model>.py."""
  if model not in FIELDS["model"].metadata["choices"]:
    raise UserError(f"unknown --model={model!r}; choose one of: softmax, mlp, cnn")
  path = configs_dir() / f"{model}.py"
  spec = importlib.util.spec_from_file_location(f"mnist_tf2_configs_{model}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.PRESETS


def _check_type(name: str, value: Any) -> Any:
  """Returns `value` as the field's type, or raises a one-line UserError."""
  expected = FIELDS[name].type
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
    raise UserError(f"--{name} must be {expected.__name__}, got {value!r}")
  return value


COMMAND_LINE = "command line"
BUILT_IN = "built-in default"

# Preset fields that count steps of the run: fractions of the preset's
# --max_steps, so a run of another length keeps its shape and its number of
# evaluation points (see `_fit_run_length`). Not log_every, steps_per_loop or
# checkpoint_every: they are about output, speed and wall time, and never
# conflict with a run's length (the last step is always logged and saved).
RUN_LENGTH_FIELDS = ("warmup_steps", "eval_every")


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A Config plus where each value came from and what was adjusted.

  Attributes:
    config: the validated Config.
    sources: field -> COMMAND_LINE, "preset <model>/<name>" or BUILT_IN.
    preset_values: field -> value the preset (over the built-in defaults) gave,
      before the command line.
    notes: one line per value changed to fit the command line (e.g. a preset's
      warm-up scaled to a shorter --max_steps); commands print them.
  """
  config: Config
  sources: dict[str, str]
  preset_values: dict[str, Any]
  notes: tuple[str, ...] = ()

  def changed(self) -> dict[str, Any]:
    """Fields the command line set to a value other than the preset's."""
    return {name: getattr(self.config, name) for name, source in self.sources.items()
            if source == COMMAND_LINE and name != "workdir"
            and getattr(self.config, name) != self.preset_values.get(name)}


def resolve(model: str, preset: str = "default", overrides: dict[str, Any] | None = None
           ) -> Config:
  """Builds and validates the Config for `model` and `preset` plus `overrides`.

  Args:
    model: softmax, mlp or cnn.
    preset: a key of PRESETS in configs/<model>.py.
    overrides: field -> value given explicitly (flags); wins over the preset.

  Returns:
    The validated Config (`resolve_with_sources` also says where each value
    came from).

  Raises:
    UserError: on an unknown model, preset or field, a wrong type, a value
      out of range, or flags of the command line that contradict each other;
      the message is one line and names each value's source.
  """
  return resolve_with_sources(model, preset, overrides).config


def resolve_with_sources(model: str, preset: str = "default",
                         overrides: dict[str, Any] | None = None,
                         chosen: tuple[str, ...] = ("model", "preset")) -> Resolved:
  """As `resolve`, returning the `Resolved` record.

  `chosen` names which of model and preset were given (not their defaults).

  A value the command line did not set never contradicts one it did: preset
  step counts scale with a different --max_steps, and a preset setting that
  cannot go with a flag gives way to it (each with a line in `notes`). Only
  flags of the command line contradicting each other, or a flag that asks for
  what the run cannot give, are refused.
  """
  overrides = dict(overrides or {})
  presets = load_presets(model)
  if preset not in presets:
    raise UserError(f"unknown --preset={preset!r} for --model={model}; "
                    f"choose one of: {', '.join(presets)}")
  values = {name: field.default for name, field in FIELDS.items()}
  sources = dict.fromkeys(FIELDS, BUILT_IN)
  values.update(model=model, preset=preset)
  sources.update(dict.fromkeys(chosen, COMMAND_LINE))
  for name, value in presets[preset].items():
    if name not in FIELDS:
      raise UserError(f"unknown config field {name!r} in preset {model}/{preset}")
    values[name] = _check_type(name, value)
    sources[name] = f"preset {model}/{preset}"
  preset_values = dict(values)
  for name, value in overrides.items():
    if name not in FIELDS:
      raise UserError(f"unknown config field {name!r}")
    values[name] = _check_type(name, value)
    sources[name] = COMMAND_LINE
  notes = _fit_run_length(values, sources, preset_values)
  notes += _settle_conflicts(values, sources)
  _check_applies(values, sources, overrides)
  if not values["workdir"]:
    values["workdir"] = os.path.join("/tmp/mnist_tf2", f"{model}-{preset}")
  config = Config(**values)
  validate(config, sources)
  return Resolved(config, sources, preset_values, tuple(notes))


def describe(name: str, values, sources: dict[str, str]) -> str:
  """`--name=value (source)`: a value and where it came from, for messages."""
  value = values[name] if isinstance(values, dict) else getattr(values, name)
  source = sources.get(name)
  return f"--{name}={value} ({source})" if source else f"--{name}={value}"


def _fit_run_length(values, sources, preset_values) -> list[str]:
  """Scales the preset's step counts to a --max_steps given on the command line."""
  preset_steps, steps = preset_values["max_steps"], values["max_steps"]
  if sources["max_steps"] != COMMAND_LINE or steps == preset_steps or steps <= 0:
    return []
  changed = []
  for name in RUN_LENGTH_FIELDS:
    old = values[name]
    if sources[name] == COMMAND_LINE or old <= 0:
      continue
    new = round(old * steps / preset_steps)
    # Warm-up stays below the run; evaluation is never more frequent than the
    # log line (a 5-step check need not evaluate 5 times).
    new = min(new, steps - 1) if name == "warmup_steps" else max(new, values["log_every"])
    if name == "eval_every" and new >= steps:
      new = 0  # No evaluation would fall inside the run: say "only at the end".
    if new != old:
      values[name] = new
      sources[name] = f"{sources[name]}, scaled to --max_steps={steps}"
      changed.append(f"{name} {old} -> {new}" + (" (only at the end)" if new == 0 and
                                                   name == "eval_every" else ""))
  if not changed:
    return []
  return [f"Scaled with --max_steps={steps} (the preset runs {preset_steps}): "
          f"{', '.join(changed)}"]


def _settle_conflicts(values, sources) -> list[str]:
  """A preset setting that cannot go with a flag gives way to the flag."""
  notes = []
  if values["deterministic"] and values["jit_compile"] and values["model"] == "cnn":
    # XLA has no deterministic max-pool gradient.
    given = [name for name in ("deterministic", "jit_compile")
             if sources[name] == COMMAND_LINE]
    if len(given) == 1:
      other = "jit_compile" if given == ["deterministic"] else "deterministic"
      notes.append(f"--{given[0]} (command line) turns off {describe(other, values, sources)}"
                   ": the cnn has no deterministic XLA max-pool gradient")
      values[other] = False
      sources[other] = f"turned off by --{given[0]}"
  return notes


def _check_applies(values, sources, overrides) -> None:
  """Refuses a flag that the rest of the config would silently ignore."""
  model = values["model"]
  for name, only_for in MODEL_ONLY_FIELDS.items():
    if name in overrides and model != only_for:
      raise UserError(f"--{name} applies to --model={only_for} only, not "
                      f"{describe('model', values, sources)}")
  for name in overrides:
    if name.startswith("augment_") and not values["augment"]:
      raise UserError(f"--{name} has no effect without --augment "
                      f"({describe('augment', values, sources)})")
  if values["fake_data"]:
    if overrides.get("data_source", "fake") != "fake":
      raise UserError(f"--fake_data contradicts --data_source={overrides['data_source']} "
                      "(both on the command line)")
    values["data_source"] = "fake"
    sources["data_source"] = "--fake_data"
  for name, only_for in SOURCE_ONLY_FIELDS.items():
    if name in overrides and values["data_source"] != only_for:
      raise UserError(f"--{name} applies to --data_source={only_for} only, not "
                      f"{describe('data_source', values, sources)}")
  if "momentum" in overrides and values["optimizer"] != "momentum":
    raise UserError(f"--momentum applies to --optimizer=momentum only, not "
                    f"{describe('optimizer', values, sources)}")


def validate(config: Config, sources: dict[str, str] | None = None) -> None:
  """Raises a one-line UserError if a field is out of range.

  `sources` (field -> where the value came from) only enriches the messages.
  """
  sources = sources or {}
  for name, field in FIELDS.items():
    choices = field.metadata.get("choices")
    value = getattr(config, name)
    if choices and value not in choices:
      raise UserError(f"--{name}={value!r} is not one of: {', '.join(choices)}")
  positive = ("batch_size", "eval_batch_size", "max_steps", "steps_per_loop", "log_every",
              "checkpoint_every", "hidden1", "hidden2", "fake_examples", "learning_rate",
              "cluster_timeout")
  for name in positive:
    if getattr(config, name) <= 0:
      raise UserError(f"--{name} must be positive, got {getattr(config, name)}")
  non_negative = ("eval_every", "warmup_steps", "validation_size", "weight_decay",
                  "num_cpu_devices", "augment_shift", "augment_elastic_alpha",
                  "histogram_every")
  for name in non_negative:
    if getattr(config, name) < 0:
      raise UserError(f"--{name} must be >= 0, got {getattr(config, name)}")
  for name in ("dropout_rate", "label_smoothing", "momentum", "augment_scale"):
    if not 0.0 <= getattr(config, name) < 1.0:
      raise UserError(f"--{name} must be in [0, 1), got {getattr(config, name)}")
  if not 0.0 <= config.augment_rotation <= 180.0:
    raise UserError(f"--augment_rotation must be in [0, 180] degrees, got "
                    f"{config.augment_rotation}")
  if not 0.0 < config.augment_elastic_sigma <= MAX_ELASTIC_SIGMA:
    # Beyond half the image the smoothed field is nearly a rigid shift, which
    # --augment_shift gives more cheaply.
    raise UserError(f"--augment_elastic_sigma must be in (0, {MAX_ELASTIC_SIGMA:g}] pixels, "
                    f"got {config.augment_elastic_sigma}")
  if config.max_to_keep < 2:
    # A newer checkpoint is only trusted once written; keep the previous one.
    raise UserError(f"--max_to_keep must be at least 2, got {config.max_to_keep}")
  if config.warmup_steps >= config.max_steps and config.warmup_steps > 0:
    raise UserError(f"{describe('warmup_steps', config, sources)} must be below "
                    f"{describe('max_steps', config, sources)}")
  if config.deterministic and config.jit_compile and config.model == "cnn":
    raise UserError(f"{describe('deterministic', config, sources)} and "
                    f"{describe('jit_compile', config, sources)} cannot be combined for the "
                    "cnn: XLA has no deterministic max-pool gradient; drop one of them")
  devices.check_strategy(devices.parse(config.devices), config.strategy)
  if config.tpu and config.strategy != "tpu":
    raise UserError(f"--tpu={config.tpu!r} applies to --strategy=tpu only, not "
                    f"--strategy={config.strategy}")
  splits = config.eval_splits.split(",")
  unknown = [name for name in splits if name not in EVAL_SPLITS]
  if unknown or len(set(splits)) != len(splits):
    raise UserError(f"--eval_splits={config.eval_splits!r} must be distinct names from: "
                    f"{', '.join(EVAL_SPLITS)}")
  if config.data_source == "idx" and not config.data_dir:
    raise UserError("--data_source=idx needs --data_dir=DIR holding the four MNIST IDX files")
  profile = profile_range(config.profile_steps)
  if profile and not config.summaries:
    raise UserError("--profile_steps needs summaries on; drop --summaries=false")
  if profile and profile[1] > config.max_steps:
    raise UserError(f"{describe('profile_steps', config, sources)} ends after "
                    f"{describe('max_steps', config, sources)}")


def profile_range(profile_steps: str) -> tuple[int, int] | None:
  """Parses --profile_steps "A,B" into (A, B) with 0 <= A < B; "" gives None."""
  if not profile_steps:
    return None
  parts = profile_steps.split(",")
  try:
    start, stop = (int(part) for part in parts)
  except ValueError:
    start, stop = -1, -1  # Wrong count or not integers: refused just below.
  if not 0 <= start < stop:
    raise UserError(f"--profile_steps={profile_steps!r} must be two global steps A,B with "
                    "0 <= A < B, e.g. 100,110")
  return start, stop


def check_batch_fits(config: Config, split_sizes: dict[str, int]) -> None:
  """Refuses a training batch larger than the training split."""
  if config.batch_size > split_sizes["train"]:
    raise UserError(f"--batch_size={config.batch_size} is larger than the training split "
                    f"({split_sizes['train']} examples)")


# --- absl flags -----------------------------------------------------------------------------


def flags_help() -> str:
  """The train command's flags for --help: the presets, then every field by group."""
  lines = ["Presets (configs/<model>.py; --preset=NAME, the fields each one sets; your "
           "flags win):"]
  for model in FIELDS["model"].metadata["choices"]:
    for name, values in load_presets(model).items():
      settings = " ".join(f"{key}={value}" for key, value in values.items())
      lines.extend(textwrap.wrap(f"{model}/{name}: {settings}", width=98,
                                 initial_indent="  ", subsequent_indent="      "))
  group = None
  for name, field in FIELDS.items():
    if field.metadata["group"] != group:
      group = field.metadata["group"]
      lines.extend(["", f"{group}:"])
    shown = repr(field.default) if field.type is str else field.default
    lines.append(f"  --{name}  (default: {shown})")
    lines.extend(textwrap.wrap(field.metadata["help"], width=98, initial_indent="      ",
                               subsequent_indent="      "))
  lines.append("  --train_dir  alias of --workdir (the tutorials' name)")
  return "\n".join(lines)


_ALIASES = {"train_dir": "workdir"}


def define_flags(flag_values=None) -> None:
  """Defines one absl flag per Config field (default None = "from the preset")."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  definers = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, bool: flags.DEFINE_bool}
  for name, field in FIELDS.items():
    default = field.default
    help_text = f"{field.metadata['help']} [built-in default: {default!r}; presets may change it]"
    if name in ("model", "preset"):
      help_text = field.metadata["help"]
    else:
      default = None
    if name == "model":
      default = "cnn"
    elif name == "preset":
      default = "default"
    definers[field.type](name, default, help_text, flag_values=flag_values)
  for alias, target in _ALIASES.items():
    flags.DEFINE_alias(alias, target, flag_values=flag_values)


def config_from_flags(flag_values=None) -> Config:
  """Resolves the Config from parsed absl flags."""
  return resolve_flags(flag_values).config


def resolve_flags(flag_values=None) -> Resolved:
  """Resolves the Config from parsed absl flags, with each value's source."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  overrides = {name: flag_values[name].value for name in FIELDS
               if flag_values[name].present}
  chosen = tuple(name for name in ("model", "preset") if name in overrides)
  return resolve_with_sources(overrides.pop("model", flag_values.model),
                              overrides.pop("preset", flag_values.preset), overrides, chosen)
