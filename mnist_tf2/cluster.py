"""Multi-worker runs that survive what clusters do: preemption, lost workers, bad starts.

TensorFlow provides the parts; this module wires them to the loop:

* `configure_coordination`: MultiWorkerMirroredStrategy's coordination service
  (a key-value store and heartbeats, hosted by the chief) with a heartbeat
  timeout of half `--cluster_timeout`. A worker that dies or vanishes stops
  sending heartbeats; the service then aborts the collectives of the others,
  which would otherwise wait in an all-reduce forever. (A peer's process that
  exits on the same host resets its connections and is noticed at once.)
* `waiting_for_workers`: the strategy's start waits for every worker of
  TF_CONFIG without a word or a time limit; a watchdog process
  (join_watchdog) says whom it waits for and gives up after `--cluster_timeout`.
* `check_same_run`: every worker publishes its TF_CONFIG cluster and flags in
  the coordination service's key-value store and compares the others', so a
  mismatch is one line instead of a hang or silently different workers.
* `MultiWorkerStop`: `tf.distribute.experimental.PreemptionCheckpointHandler`
  agrees on the step at which all workers save when any one is signalled; we
  give it our signal watcher (SIGTERM and SIGINT), our verified save and an
  exit that raises `Preempted`.
* `lost_worker`: the collective's error, turned into one line naming the lost
  worker and the last checkpoint.

Not used: `CommunicationOptions(timeout_seconds=...)`, the per-collective
timeout, which TensorFlow documents as a debugging aid that starts a thread per
collective (hundreds a second here). A worker that is alive but stuck (still
sending heartbeats) is therefore not detected.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading

import tensorflow as tf
# The coordination service's settings have no public API; MultiWorkerMirroredStrategy
# itself configures it through this call, and keeps a configuration made before it.
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context
from tensorflow.python.util import deprecation

from mnist_tf2 import join_watchdog
from mnist_tf2.errors import Preempted
from mnist_tf2.errors import UserError

# Seconds of silence before a worker says whom it is waiting for.
NOTICE_AFTER = 10
# Config fields that may differ between the workers of one run.
LOCAL_FIELDS = ("workdir", "export_dir")
KEY_PREFIX = "mnist_tf2"
# The collective errors a lost peer causes, as opposed to a bug in the step.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                    tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError)
LOST_PEER_TEXT = re.compile(r"aborted|unhealthy|heartbeat|connection|socket|peer|"
                            r"coordination|unavailable", re.I)


def tasks(tf_config: dict) -> list[tuple[str, int, str]]:
  """(job, index, "host:port") of every task, chief first, in TF_CONFIG order."""
  cluster = tf_config["cluster"]
  return [(job, i, address) for job in ("chief", "worker")
          for i, address in enumerate(cluster.get(job, []))]


def task_name(job: str, index: int) -> str:
  return f"{job} {index}"


def own_task(tf_config: dict) -> tuple[str, int]:
  return tf_config["task"]["type"], tf_config["task"]["index"]


def configure_coordination(tf_config: dict, timeout: float) -> None:
  """Starts the coordination service with a heartbeat timeout of `timeout` / 2.

  The service notices a silent task after about twice its heartbeat timeout,
  so a lost worker stops the others after about `timeout` seconds. Must run
  before MultiWorkerMirroredStrategy is created.
  """
  cluster = tf_config["cluster"]
  leader = "chief" if cluster.get("chief") else "worker"
  context.context().configure_coordination_service(
      service_type="standalone",
      service_leader=f"/job:{leader}/replica:0/task:0",
      heartbeat_timeout_in_ms=int(timeout * 500),
      coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
                        for job in ("chief", "worker") if cluster.get(job)])


def multi_worker_strategy(config, tf_config: dict) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy, once every worker of `tf_config` has joined with the same flags.

  Raises:
    UserError: this worker cannot listen on its address, or the workers'
      clusters or flags differ. (A cluster that does not form within
      `config.cluster_timeout` ends the process, see `waiting_for_workers`.)
  """
  configure_coordination(tf_config, config.cluster_timeout)
  with waiting_for_workers(tf_config, config.cluster_timeout):
    try:
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.UnknownError as e:  # Its gRPC server cannot listen on its address.
      job, index = own_task(tf_config)
      raise UserError(f"cannot start {task_name(job, index)}'s server on "
                      f"{tf_config['cluster'][job][index]} ({_reason(e)}): is the port in "
                      "use, e.g. by a previous worker still running?") from None
  check_same_run(config, tf_config, config.cluster_timeout)
  return strategy


@contextlib.contextmanager
def waiting_for_workers(tf_config: dict, timeout: float):
  """Around the strategy's start, which waits for every worker of TF_CONFIG.

  A watchdog process (see join_watchdog) prints whom it waits for after
  NOTICE_AFTER seconds and ends the wait after `timeout` seconds.
  """
  watchdog = subprocess.Popen(
      [sys.executable, join_watchdog.__file__, str(os.getpid()), str(timeout),
       str(NOTICE_AFTER), json.dumps(tf_config)], stdin=subprocess.PIPE)
  try:
    yield
  finally:
    watchdog.stdin.close()
    watchdog.wait()


def check_same_run(config, tf_config: dict, timeout: float) -> None:
  """Refuses to train unless every worker has the same TF_CONFIG cluster and flags.

  Raises:
    UserError: naming the first worker that differs and how.
  """
  me = own_task(tf_config)
  mine = {"cluster": tf_config["cluster"],
          **{k: v for k, v in config.to_dict().items() if k not in LOCAL_FIELDS}}
  ctx = context.context()
  ctx.set_config_key_value(f"{KEY_PREFIX}/run/{me[0]}/{me[1]}", json.dumps(mine, sort_keys=True))
  for job, index, address in tasks(tf_config):
    if (job, index) == me:
      continue
    try:
      theirs = json.loads(ctx.get_config_key_value(f"{KEY_PREFIX}/run/{job}/{index}",
                                                   timeout_in_ms=int(timeout * 1000)))
    except tf.errors.OpError as e:
      raise UserError(f"{task_name(job, index)} at {address} did not report its flags "
                      f"within {timeout:g} s ({_reason(e)})") from None
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if "cluster" in differ:
      raise UserError(f"{task_name(job, index)} has another TF_CONFIG cluster "
                      f"({json.dumps(theirs.get('cluster'))}) than this {task_name(*me)} "
                      f"({json.dumps(mine['cluster'])}); give every worker the same cluster")
    if differ:
      shown = ", ".join(f"--{k}={theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ[:3])
      raise UserError(f"{task_name(job, index)} runs with other flags than this "
                      f"{task_name(*me)}: {shown}; start every worker with the same flags")


def _reason(error) -> str:
  """The informative line of a (collective) error: what aborted it, if it says."""
  lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()
           if line.strip()]
  for line in lines:
    if "aborted by:" in line:
      return line.split("aborted by:", 1)[1].strip()
  return next((line for line in lines if LOST_PEER_TEXT.search(line)),
              lines[0] if lines else type(error).__name__)


class MultiWorkerStop:
  """Saves on every worker at one step and stops them all when any one is signalled.

  Call `check(step)` between chunks of steps, at the same points on every
  worker (the loop's schedule is the same everywhere). The signalled worker
  tells the others through the coordination service which `check` call to
  save at (the next one: the others may already be one chunk further); each
  worker then saves with `save(step)` and raises `Preempted` with the signal
  the first signalled worker received, so all exit with the same status.
  """

  def __init__(self, strategy, watcher, save, checkpoint_dir, scratch_dir):
    """Args:
      strategy: the MultiWorkerMirroredStrategy.
      watcher: has `requested` and `signum` (a checkpoints.PreemptionWatcher).
      save: save(step) -> the path of the checkpoint written by this worker.
      checkpoint_dir: the run's checkpoint directory (the chief's), for messages.
      scratch_dir: a directory the handler may look into and never writes.
    """
    self.watcher = watcher
    self.save = save
    self.checkpoint_dir = checkpoint_dir
    self.step = None
    self.saved = None
    self.me = task_name(strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id)
    # The handler restores its own checkpoint when created; an empty one keeps
    # restoring to our Checkpointer (with its fallback and mismatch checks).
    empty = tf.train.CheckpointManager(tf.train.Checkpoint(), scratch_dir, max_to_keep=1)
    _quiet_watcher_thread_errors()
    self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, empty,
        termination_config=tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=self._signalled, exit_fn=self._exit, save_fn=self._save))

  def _signalled(self) -> bool:
    # Polled every second on the handler's thread.
    if not self.watcher.requested:
      return False
    with contextlib.suppress(tf.errors.AlreadyExistsError):
      context.context().set_config_key_value(
          f"{KEY_PREFIX}/stopped_by", json.dumps([self.me, self.watcher.signum]))
    return True

  def _save(self):
    self.saved = os.path.join(self.checkpoint_dir, os.path.basename(self.save(self.step)))

  def _exit(self):
    try:
      who, signum = json.loads(context.context().get_config_key_value(
          f"{KEY_PREFIX}/stopped_by", timeout_in_ms=10000))
    except (tf.errors.OpError, ValueError):
      who, signum = "a worker", 15
    print(f"Stopped by {signal.Signals(signum).name} to {who} at step {self.step}: saved "
          f"{self.saved}; run the same command on every worker to resume", flush=True)
    raise Preempted(signum)

  def check(self, step: int) -> None:
    """Saves and raises `Preempted` if the workers agreed to stop here."""
    self.step = step
    # The handler counts its calls through a property it marks deprecated.
    with deprecation.silence():
      self.handler.save_checkpoint_if_preempted()


def _quiet_watcher_thread_errors() -> None:
  """Keeps the handler's watcher thread from printing a traceback when a peer is lost.

  The thread waits on the coordination service, which a lost peer aborts with
  an OpError; the main thread reports the loss in one line (`lost_worker`).
  """
  previous = threading.excepthook

  def hook(args):
    if not (args.thread is not None and args.thread.name.startswith("PeerTerminationWatcher")
            and issubclass(args.exc_type, tf.errors.OpError)):
      previous(args)

  threading.excepthook = hook


@contextlib.contextmanager
def lost_workers_reported(config):
  """Turns the error a lost worker causes into one line (multi-worker runs only)."""
  try:
    yield
  except tf.errors.OpError as e:
    if config.strategy != "multi_worker":
      raise
    raise lost_worker(e, config, json.loads(os.environ["TF_CONFIG"])) from None


def lost_worker(error: Exception, config, tf_config: dict) -> Exception:
  """The one-line UserError for a collective aborted by a lost peer, else `error`."""
  text = str(getattr(error, "message", error))
  if not isinstance(error, LOST_PEER_ERRORS) or not LOST_PEER_TEXT.search(text):
    return error
  me = own_task(tf_config)
  named = {(job, int(index)) for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)",
                                                          text)}
  lost = [(job, index, address) for job, index, address in tasks(tf_config)
          if (job, index) in named and (job, index) != me]
  if not lost and "CoordinationService" in text:
    lost = tasks(tf_config)[:1]  # The service's host, the chief, stopped answering.
  who = (", ".join(f"{task_name(job, index)} ({address})" for job, index, address in lost)
         or "another worker")
  latest = tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints"))
  return UserError(f"lost {who}: {_reason(error)}; this {task_name(*me)} stopped; the last "
                   f"checkpoint is {latest or 'none'}; run the same command on every worker "
                   "to resume")
