"""One training run per workdir: a lock that dies with the process holding it.

Two runs writing one workdir would interleave checkpoints and overwrite each
other's config.json and results.json. `train` (the chief, on a multi-worker
run) holds `<workdir>/train.lock` for the whole run. The lock is the kernel's
`flock`, which is released when its process ends however it ends (kill -9
included), so a stale lock cannot block a restart; the file itself records who
holds it (PID, host, start time) for the refusal message and for the note when
a later run takes over after a dead one.

Readers (`evaluate`, `export`, `predict`) take no lock: they read only
checkpoints listed in the `checkpoint` state file, which TensorFlow replaces
atomically once a checkpoint is complete (and, here, verified).

On a network file system `flock` is as good as that file system's locking
(NFSv4 implements it; some FUSE mounts do not).
"""

import fcntl
import json
import os
import socket
import sys
import time

from mnist_tf2.errors import UserError

LOCK_NAME = "train.lock"


def _describe(holder: dict) -> str:
  when = holder.get("started")
  since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}" if when else ""
  return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _read_holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode(errors="replace").strip()
  if not text:
    return {}
  try:
    holder = json.loads(text)
  except ValueError:
    return {"pid": "?", "host": f"? (unreadable lock file: {text[:40]!r})"}
  return holder if isinstance(holder, dict) else {}


class WorkdirLock:
  """Holds `<workdir>/train.lock` from `acquire()` to `release()` or the end of a `with`.

  `with WorkdirLock(workdir) as lock:` does not lock by itself (the workdir may
  not exist yet): call `lock.acquire()` inside; leaving the block releases it.
  """

  def __init__(self, workdir: str, stream=None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.stream = stream
    self._fd = None

  def acquire(self) -> None:
    """Locks the workdir (which must exist) for this process.

    Raises:
      UserError: another live process holds the workdir (the message names its
        PID and host), or the lock file cannot be created.
    """
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      for _ in range(20):  # A holder that locked an instant ago writes its record next.
        if holder:
          break
        time.sleep(0.05)
        holder = _read_holder(fd)
      os.close(fd)
      raise UserError(f"--workdir={self.workdir} is in use by another training run "
                      f"({_describe(holder)}; lock {self.path}); wait for it to finish or "
                      "stop it, or use another --workdir") from None
    previous = _read_holder(fd)
    if previous:
      # Released without being cleared: its process ended without a clean exit.
      print(f"Note: took over {self.path} from {_describe(previous)}, which is no longer "
            "running (it did not exit cleanly)", file=self.stream or sys.stdout, flush=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Clears the holder record, then unlocks (the file stays, see `acquire`).

    The file is never deleted: a process that opened it just before a delete
    would lock the deleted file while a third created and locked a new one.
    """
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    finally:
      os.close(self._fd)  # Closing the descriptor releases the flock.
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.release()
