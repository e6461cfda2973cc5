"""Says whom a starting multi-worker run waits for, and ends the wait after a timeout.

MultiWorkerMirroredStrategy's start blocks inside TensorFlow, holding Python's
GIL, until every worker of TF_CONFIG has joined: no thread or signal handler
of the waiting process runs meanwhile. So the watch is this small separate
process (no TensorFlow): `cluster.waiting_for_workers` starts it and closes its
stdin once the cluster has formed (or the worker died). Otherwise it prints a
line naming the workers it waits for after `notice` seconds and, after
`timeout` seconds, an `error:` line, then kills the waiting worker (SIGKILL:
nothing else reaches it; it holds no lock and has written nothing yet).

Usage: python -m mnist_tf2.join_watchdog PARENT_PID TIMEOUT NOTICE TF_CONFIG_JSON
"""

import json
import os
import select
import signal
import socket
import sys


def _reachable(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host, int(port)), timeout=1):
      return True
  except OSError:
    return False


def others_status(tf_config: dict) -> str:
  """'worker 1 at host:port: not running; ...' for every other task of TF_CONFIG."""
  me = (tf_config["task"]["type"], tf_config["task"]["index"])
  states = []
  for job in ("chief", "worker"):
    for index, address in enumerate(tf_config["cluster"].get(job, [])):
      if (job, index) != me:
        state = ("up, not joined (compare its TF_CONFIG)" if _reachable(address)
                 else "not running")
        states.append(f"{job} {index} at {address}: {state}")
  return "; ".join(states)


def _released(seconds: float) -> bool:
  """True once stdin is closed or written to (the cluster formed, or the worker died)."""
  readable, _, _ = select.select([sys.stdin], [], [], max(seconds, 0))
  return bool(readable)


def main(argv) -> None:
  parent, timeout, notice, tf_config = int(argv[1]), float(argv[2]), float(argv[3]), json.loads(
      argv[4])
  if _released(min(notice, timeout)):
    return
  print(f"Waiting for the other workers of TF_CONFIG to join ({others_status(tf_config)}); "
        f"giving up after {timeout:g} s (--cluster_timeout)", flush=True)
  if _released(timeout - notice):
    return
  task = f"{tf_config['task']['type']} {tf_config['task']['index']}"
  print(f"error: the cluster did not form within {timeout:g} s (--cluster_timeout): "
        f"{others_status(tf_config)}; start the same command on every worker, each with the "
        f"same TF_CONFIG cluster and its own task (this is {task})", file=sys.stderr, flush=True)
  os.kill(parent, signal.SIGKILL)


if __name__ == "__main__":
  main(sys.argv)
