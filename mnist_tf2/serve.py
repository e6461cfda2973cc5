"""Serve an exported model over HTTP: `python -m mnist_tf2.serve --export_dir=E`.

Two faces on one port (default http://127.0.0.1:8501/):

* TensorFlow Serving's REST API (`mnist_tf2.rest`), so its clients work unchanged:
  `GET /v1/models/mnist`, `GET /v1/models/mnist/metadata`,
  `POST /v1/models/mnist:predict` with {"instances": ...} or {"inputs": ...}.
* `POST /api/image`: an image file (a photo, a scan, a drawing; as the raw body or
  a multipart form field) read by `mnist_tf2.preprocess.prepare`, as `predict`
  reads files, answered with {"class", "probabilities", "image": the 28x28 uint8
  input the model saw, "info": where the digit was found}.
  The page at `/` (mnist_tf2/static/, no network needed) draws and uploads
  digits through it.

Bad requests get a 4xx with a one-line {"error": "..."} and the server goes on.
Requests run concurrently on a fixed pool of `--threads` (waitress), bodies are
capped (16 MiB, 1,024 images), so memory stays bounded. One log line per request on
stderr; Ctrl-C or SIGTERM stop it.
"""

import errno
import logging as std_logging
import os
import signal
import sys

from absl import flags
import waitress

from mnist_tf2 import cli
from mnist_tf2 import devices
from mnist_tf2.errors import UserError

MAX_CONNECTIONS = 100  # open at once; more wait in the kernel's accept queue


def url_of(host: str, port: int) -> str:
  shown = f"[{host}]" if ":" in host else host
  return f"http://{shown}:{port}/"


def create_server(application, host: str, port: int, threads: int, max_body_bytes: int):
  """A waitress server on host:port (0: any free port); UserError if it cannot listen."""
  try:
    return waitress.create_server(
        application, host=host, port=port, threads=threads,
        connection_limit=MAX_CONNECTIONS,
        # The application's own limit answers in JSON (413); this is the backstop.
        max_request_body_size=2 * max_body_bytes,
        channel_timeout=30, ident="mnist_tf2")
  except OSError as e:
    hint = {errno.EADDRINUSE: "; choose another --port (0 picks a free one)",
            errno.EACCES: "; ports below 1024 need root: choose another --port"}
    raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                    f"{hint.get(e.errno, '')}") from None


def _stop(signum, frame):
  del signum, frame
  raise KeyboardInterrupt  # waitress's loop ends cleanly on it


def define_flags() -> None:
  flags.DEFINE_string("export_dir", "", "The SavedModel written by mnist_tf2.export.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; 0.0.0.0 exposes the "
                      "server to the network.")
  flags.DEFINE_integer("port", 8501, "Port to listen on (TensorFlow Serving's REST port); "
                       "0 picks a free one.")
  flags.DEFINE_string("model_name", "mnist", "The NAME in /v1/models/NAME.")
  flags.DEFINE_integer("threads", 4, "Requests served at once; more wait in a queue.")
  devices.define_log_device_placement_flag()


def main(argv):
  del argv  # cli.run refused positional arguments.
  # waitress warns each time a request waits for a thread; our log line per
  # request already shows the wait in its time.
  std_logging.getLogger("waitress.queue").setLevel(std_logging.ERROR)
  flag_values = flags.FLAGS
  if not flag_values.export_dir:
    raise UserError("--export_dir is empty; name the SavedModel from mnist_tf2.export")
  if not 1 <= flag_values.threads <= 64:
    raise UserError(f"--threads must be in 1..64, got {flag_values.threads}")
  if not 0 <= flag_values.port <= 65535:
    raise UserError(f"--port must be in 0..65535, got {flag_values.port}")
  cli.import_tensorflow()
  devices.set_log_device_placement(flag_values.log_device_placement)
  from mnist_tf2 import server  # pylint: disable=g-import-not-at-top
  application = server.ModelServer(flag_values.export_dir, flag_values.model_name)
  httpd = create_server(application, flag_values.host, flag_values.port,
                        flag_values.threads, server.MAX_BODY_BYTES)
  signal.signal(signal.SIGTERM, _stop)
  print(f"Serving {os.path.abspath(flag_values.export_dir)} at "
        f"{url_of(flag_values.host, httpd.effective_port)} (Ctrl-C to stop)", flush=True)
  try:
    httpd.run()
  except KeyboardInterrupt:
    pass
  finally:
    httpd.close()
  print("Stopped.", flush=True)
  sys.stderr.flush()
  # Nothing is left to save, and TensorFlow's own C++ teardown at interpreter
  # exit takes seconds (measured here: 7 s on a loaded machine), which a
  # supervisor waiting for the process would wait through.
  os._exit(0)


if __name__ == "__main__":
  define_flags()
  cli.run(main, help_text=lambda: cli.command_help(
      __doc__, ["export_dir", "host", "port", "model_name", "threads", "log_device_placement"]))
