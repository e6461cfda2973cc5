"""Checks a run's dashboards through a real TensorBoard server.

Trains a short real run (or takes `--workdir` of an existing one), starts
`tensorboard --logdir WORKDIR --host 127.0.0.1 --port P` on a free loopback
port, asks its HTTP data API for the tags of every dashboard, and exits 1 if
any expected tag is missing (2 on bad arguments). The server is always stopped.

  python scripts/check_tensorboard.py                    # softmax, 300 real steps
  python scripts/check_tensorboard.py --model=cnn --max_steps=200
  python scripts/check_tensorboard.py --workdir=/tmp/mnist_tf2/cnn-default
  python scripts/check_tensorboard.py --fast             # 20 steps, for the test suite
"""

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Layers with weights, per model: their histograms are weights/<layer>/{kernel,bias}
# and activations/<layer>.
LAYERS = {"softmax": ["logits"], "mlp": ["hidden1", "hidden2", "softmax_linear"],
          "cnn": ["conv1", "conv2", "dense", "logits"]}
SPLITS = ("train", "validation", "test")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_tags(model):
  """{(dashboard, run): {tags}} that a finished run of `model` must show."""
  expected = {
      ("scalars", "train"): {"loss", "accuracy", "gradient_norm", "learning_rate",
                             "examples_per_sec"},
      ("images", "train"): {"inputs"} | ({"class_weights"} if model == "softmax" else set()),
      ("images", "eval/test"): {"confusion_matrix", "misclassified"},
      ("histograms", "train"): ({f"weights/{layer}/{weight}" for layer in LAYERS[model]
                                 for weight in ("kernel", "bias")}
                                | {f"activations/{layer}" for layer in LAYERS[model]}),
      ("graphs", "train"): {"train_loop"},
      ("text", "."): {"config", "command_line"},
      ("hparams", "hparams"): {"model", "learning_rate", "batch_size", "max_steps"},
  }
  for split in SPLITS:
    expected[("scalars", f"eval/{split}")] = {"loss", "accuracy"}
    expected[("scalars", "hparams")] = expected.get(("scalars", "hparams"), set()) | {
        f"{split}/{tag}" for tag in ("loss", "accuracy")}
  expected[("hparams", "metrics")] = expected[("scalars", "hparams")]
  return expected


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def fetch(base, route, body=None):
  """GETs (or POSTs `body` as JSON to) `route`; returns the decoded JSON."""
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(base + route, data=data,
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


def served_tags(base):
  """{(dashboard, run): {tags}} as the server reports them."""
  served = {}
  for dashboard in ("scalars", "images", "histograms", "text"):
    for run, tags in fetch(base, f"/data/plugin/{dashboard}/tags").items():
      served[(dashboard, run)] = set(tags)
  for run, info in fetch(base, "/data/plugin/graphs/info").items():
    served[("graphs", run)] = set(info.get("tags", {}))
  experiment = fetch(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
  served[("hparams", "hparams")] = {h["name"] for h in experiment.get("hparamInfos", [])}
  # A metric counts only if the session actually has a value for it.
  groups = fetch(base, "/data/plugin/hparams/session_groups", {
      "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
      "colParams": [], "startIndex": 0, "sliceSize": 10})
  served[("hparams", "metrics")] = {
      value["name"]["tag"]
      for group in groups.get("sessionGroups", []) for value in group.get("metricValues", [])}
  return served


def missing_tags(expected, served):
  return {key: sorted(tags - served.get(key, set()))
          for key, tags in expected.items() if tags - served.get(key, set())}


def tensorboard_command():
  script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
  return [script] if os.path.exists(script) else [sys.executable, "-m", "tensorboard.main"]


def check(workdir, model, timeout):
  """Serves `workdir`, waits for every expected tag; returns the missing ones."""
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  command = [*tensorboard_command(), "--logdir", workdir, "--host", "127.0.0.1",
             "--port", str(port)]
  print("$", " ".join(command), flush=True)
  log = tempfile.TemporaryFile()
  server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
  expected = expected_tags(model)
  missing, answered = expected, False
  try:
    deadline = time.time() + timeout
    # The server loads event files in the background: poll until all tags are
    # there or the time is up.
    while time.time() < deadline:
      if server.poll() is not None:
        log.seek(0)
        raise RuntimeError(f"tensorboard exited with {server.returncode}:\n"
                           f"{log.read().decode(errors='replace')[-2000:]}")
      try:
        missing = missing_tags(expected, served_tags(base))
        answered = True
      except (urllib.error.URLError, ConnectionError):
        pass  # Not listening yet.
      if not missing:
        break
      time.sleep(0.5)
  finally:
    server.terminate()
    try:
      server.wait(timeout=10)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()
  if not answered:
    print(f"tensorboard did not answer on port {port} within {timeout:.0f} s")
  for (dashboard, run), tags in sorted(expected.items()):
    lost = set(missing.get((dashboard, run), ()))
    print(f"{'ok' if not lost else 'MISSING':8}{dashboard:11}{run:16}"
          f"{', '.join(sorted(tags - lost))}"
          + (f"  -- missing: {', '.join(sorted(lost))}" if lost else ""))
  return missing


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="An existing run to check (default: train one).")
  parser.add_argument("--model", default="softmax", choices=sorted(LAYERS))
  parser.add_argument("--max_steps", type=int, default=300)
  parser.add_argument("--fast", action="store_true", help="20 steps (for the test suite).")
  parser.add_argument("--timeout", type=float, default=90, help="Seconds to wait for the tags.")
  args = parser.parse_args()

  workdir, own_workdir = args.workdir, None
  if workdir:
    with open(os.path.join(workdir, "config.json")) as f:
      model = json.load(f)["model"]
  else:
    own_workdir = workdir = tempfile.mkdtemp(prefix="check_tensorboard_")
    model = args.model
    steps = 20 if args.fast else args.max_steps
    command = [sys.executable, "-m", "mnist_tf2.train", f"--model={model}", "--preset=seed",
               f"--max_steps={steps}", f"--log_every={steps // 2}",
               f"--histogram_every={steps // 2}", f"--profile_steps={steps // 2},{steps}",
               f"--workdir={workdir}"]
    print("$", " ".join(command), flush=True)
    start = time.time()
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if run.returncode:
      sys.exit(f"training failed ({run.returncode}):\n{run.stderr[-3000:]}")
    print(f"trained in {time.time() - start:.1f} s")
  try:
    missing = check(workdir, model, args.timeout)
    # TensorBoard serves traces only with tensorboard-plugin-profile: check the file.
    profiles = glob.glob(os.path.join(workdir, "train", "plugins", "profile", "*",
                                      "*.xplane.pb"))
    # An existing run need not have used --profile_steps.
    status = "ok" if profiles else "MISSING" if own_workdir else "-"
    print(f"{status:8}{'profile':11}{'train':16}{len(profiles)} xplane.pb trace(s)")
    if own_workdir and not profiles:
      missing[("profile", "train")] = ["xplane.pb"]
  finally:
    if own_workdir:
      shutil.rmtree(own_workdir, ignore_errors=True)
  if missing:
    print(f"FAILED: {sum(len(tags) for tags in missing.values())} tag(s) missing")
    sys.exit(1)
  print("all tags served")


if __name__ == "__main__":
  main()
