"""Load test for `python -m mnist_tf2.serve`: N concurrent clients for T seconds.

  python -m mnist_tf2.serve --export_dir=E &          # in another terminal
  python scripts/load_test.py --clients=1,8,32 --seconds=20

Each client is a thread with its own keep-alive connection that sends one
request after another (no think time): a TF Serving predict of one MNIST test
image as uint8 pixels (`--endpoint=predict`, `--batch` images per request, to
the signature the metadata shows taking uint8) or one PNG to our `/api/image`
(`--endpoint=image`). Prints a Markdown table: clients, requests, requests/s,
p50 and p99 latency (ms), errors (non-200 answers and connection failures),
the accuracy of the answers, and with `--server_pid` the server's CPU time per
request (`-` without it).

Only a server on this machine (a loopback address) is accepted, and every run
is bounded in time and count. The clients share the machine with the server:
on few cores they take CPU from it, so compare runs made on the same machine.
"""

import argparse
import http.client
import io
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

import numpy as np
from PIL import Image

import mnist_tf2
from mnist_tf2 import idx  # reads the bundled MNIST without importing TensorFlow

MNIST_DIR = os.path.join(os.path.dirname(mnist_tf2.__file__), "data", "mnist")

MAX_SECONDS = 300
MAX_CLIENTS = 256
MAX_REQUESTS = 1_000_000  # per run, whatever the speed


def loopback_address(url: str) -> tuple[str, int]:
  """(host, port) of `url`, refused unless every address it names is a loopback one."""
  parsed = urllib.parse.urlsplit(url)
  if parsed.scheme != "http" or not parsed.hostname:
    raise SystemExit(f"error: --url={url} is not an http://HOST:PORT URL")
  try:
    port = parsed.port or 80
  except ValueError:  # urlsplit checks the port only when asked for it
    raise SystemExit(f"error: --url={url} has no valid port (0-65535)") from None
  try:
    addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, port)}
  except socket.gaierror as e:
    raise SystemExit(f"error: cannot resolve host {parsed.hostname} of --url={url}: "
                     f"{e.strerror}; use a loopback address such as 127.0.0.1") from None
  if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
    raise SystemExit(f"error: --url={url} is not on this machine (loopback addresses only)")
  return parsed.hostname, port


def uint8_signature(address, model_name: str) -> str:
  """The name of the model's signature that takes uint8 images (from its metadata)."""
  connection = http.client.HTTPConnection(*address, timeout=30)
  try:
    connection.request("GET", f"/v1/models/{model_name}/metadata")
    response = connection.getresponse()
    body = response.read()
  except OSError as e:
    raise SystemExit(f"error: no server at {address[0]}:{address[1]}: {e}") from None
  finally:
    connection.close()
  if response.status != 200:
    raise SystemExit(f"error: GET /v1/models/{model_name}/metadata answered {response.status}")
  signatures = json.loads(body)["metadata"]["signature_def"]["signature_def"]
  for key in ("serving_uint8", "serving_default"):
    if signatures.get(key, {}).get("inputs", {}).get("images", {}).get("dtype") == "DT_UINT8":
      return key
  raise SystemExit("error: the model has no signature taking uint8 images")


def request_bodies(endpoint: str, batch: int, signature: str = "serving_default",
                   count: int = 100) -> list[tuple[bytes, dict, list]]:
  """`count` requests made of MNIST test images: (body, headers, expected labels)."""
  images = idx.read_idx(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
  labels = idx.read_idx(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
  bodies = []
  for i in range(count):
    chosen = slice(i * batch, (i + 1) * batch)
    if endpoint == "image":
      buffer = io.BytesIO()
      Image.fromarray(np.asarray(images[i])).save(buffer, format="PNG")
      bodies.append((buffer.getvalue(), {"Content-Type": "image/png"}, [int(labels[i])]))
    else:
      pixels = np.asarray(images[chosen])[..., np.newaxis].tolist()
      bodies.append((json.dumps({"signature_name": signature, "instances": pixels}).encode(),
                     {"Content-Type": "application/json"}, labels[chosen].tolist()))
  return bodies


class Client(threading.Thread):
  """Sends requests back to back until `deadline`; records latencies and errors."""

  def __init__(self, address, path, bodies, deadline, budget):
    super().__init__(daemon=True)
    self.address, self.path, self.bodies = address, path, bodies
    self.deadline, self.budget = deadline, budget
    self.latencies, self.errors, self.correct = [], 0, 0

  def run(self):
    connection = None
    i = 0
    while time.perf_counter() < self.deadline and self.budget.acquire(blocking=False):
      body, headers, labels = self.bodies[i % len(self.bodies)]
      i += 1
      start = time.perf_counter()
      try:
        if connection is None:
          connection = http.client.HTTPConnection(*self.address, timeout=30)
        connection.request("POST", self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        ok = response.status == 200
      except (OSError, http.client.HTTPException):
        ok, data = False, b""
        connection = None
      self.latencies.append(time.perf_counter() - start)
      if ok:
        answer = json.loads(data)
        classes = ([answer["class"]] if "class" in answer
                   else [p["classes"] for p in answer["predictions"]])
        self.correct += sum(c == label for c, label in zip(classes, labels))
      else:
        self.errors += 1
    if connection is not None:
      connection.close()


def cpu_seconds(pid: int | None) -> float:
  """User + system CPU time of process `pid` so far (Linux /proc), or NaN without one."""
  if not pid:
    return float("nan")
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(address, path, bodies, clients: int, seconds: float, server_pid=None) -> dict:
  budget = threading.Semaphore(MAX_REQUESTS)
  deadline = time.perf_counter() + seconds
  threads = [Client(address, path, bodies, deadline, budget) for _ in range(clients)]
  start, cpu_start = time.perf_counter(), cpu_seconds(server_pid)
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(seconds + 60)
  elapsed, cpu = time.perf_counter() - start, cpu_seconds(server_pid) - cpu_start
  latencies = np.array([t for thread in threads for t in thread.latencies]) * 1000
  return {"clients": clients, "requests": len(latencies),
          "per_second": len(latencies) / elapsed,
          "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
          "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
          "errors": sum(thread.errors for thread in threads),
          "cpu_ms": 1000 * cpu / max(len(latencies), 1),
          "correct": sum(thread.correct for thread in threads)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--url", default="http://127.0.0.1:8501", help="The server (loopback).")
  parser.add_argument("--model_name", default="mnist", help="The NAME in /v1/models/NAME.")
  parser.add_argument("--endpoint", choices=["predict", "image"], default="predict",
                      help="predict: TF Serving's predict with uint8 pixels; image: one PNG "
                      "to /api/image.")
  parser.add_argument("--batch", type=int, default=1, help="Images per predict request.")
  parser.add_argument("--clients", default="1,8,32", help="Comma-separated client counts.")
  parser.add_argument("--seconds", type=float, default=20.0, help="Per client count.")
  parser.add_argument("--warmup", type=int, default=20, help="Requests sent first, untimed.")
  parser.add_argument("--server_pid", type=int, default=0,
                      help="The server's process id: adds its CPU time per request, a "
                      "figure the machine's other load does not change much (0: not shown).")
  args = parser.parse_args()
  counts = [int(c) for c in args.clients.split(",")]
  if not all(1 <= c <= MAX_CLIENTS for c in counts) or not 0 < args.seconds <= MAX_SECONDS:
    raise SystemExit(f"error: clients must be in 1..{MAX_CLIENTS}, seconds in (0, {MAX_SECONDS}]")
  if not 1 <= args.batch <= 100:
    raise SystemExit("error: --batch must be in 1..100")
  address = loopback_address(args.url)
  path = ("/api/image" if args.endpoint == "image"
          else f"/v1/models/{args.model_name}:predict")
  bodies = request_bodies(args.endpoint, args.batch, uint8_signature(address, args.model_name))
  warmup = Client(address, path, bodies, time.perf_counter() + 60,
                  threading.Semaphore(args.warmup))
  warmup.run()
  if warmup.errors:
    raise SystemExit(f"error: the server at {args.url} answered {warmup.errors} of "
                     f"{args.warmup} warm-up requests with an error")
  print(f"{args.endpoint}, {args.batch} image(s) per request, {args.seconds:g} s per row, "
        f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  print("| clients | requests | requests/s | p50 ms | p99 ms | errors | accuracy "
        "| server CPU ms/request |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  failed = False
  for count in counts:
    row = run(address, path, bodies, count, args.seconds, args.server_pid)
    images = (row["requests"] - row["errors"]) * (1 if args.endpoint == "image" else args.batch)
    accuracy = row["correct"] / images if images else float("nan")
    cpu_ms = f"{row['cpu_ms']:.2f}" if args.server_pid else "-"  # not measured
    print(f"| {count} | {row['requests']} | {row['per_second']:.0f} | {row['p50']:.1f} | "
          f"{row['p99']:.1f} | {row['errors']} | {100 * accuracy:.1f}% | {cpu_ms} |",
          flush=True)
    failed |= row["errors"] > 0
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
