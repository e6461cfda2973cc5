"""The HTTP server (`python -m mnist_tf2.serve`) over real HTTP on a loopback port.

One small MLP is trained for the module (~95% test accuracy) and served by the
command itself in a subprocess; every test talks to it with http.client, and
the last one stops it with SIGTERM.
"""

import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import litert
from mnist_tf2 import loop
from mnist_tf2 import predict
from mnist_tf2 import preprocess
from mnist_tf2 import rest
from mnist_tf2.errors import UserError

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 127\.0\.0\.1 \"(GET|POST|PUT|DELETE) "
                      r"(\S+)\" (\d{3}) \d+B \d+\.\dms( error: .*)?$")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp("served")
  config = config_lib.resolve("mlp", "seed", {
      "max_steps": 400, "optimizer": "adam", "learning_rate": 3e-3, "jit_compile": False,
      "eval_splits": "test", "summaries": False, "workdir": str(base / "workdir"),
      "export_dir": str(base / "export")})
  loop.train_and_evaluate(config)
  test = datasets.load_splits(config).test
  loaded = tf.saved_model.load(config.export_dir)
  # The signature taking MNIST's uint8 bytes (serving_default in older exports).
  uint8_key = "serving_uint8" if "serving_uint8" in loaded.signatures else "serving_default"
  return types.SimpleNamespace(workdir=config.workdir, export_dir=config.export_dir,
                               base=base, test=test, loaded=loaded, uint8_key=uint8_key,
                               serve=loaded.signatures[uint8_key])


@pytest.fixture(scope="module")
def server(exported):
  """The command, on a free port; yields (host, port, log path) and checks a clean stop."""
  log_path = exported.base / "server.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_tf2.serve", f"--export_dir={exported.export_dir}",
         "--port=0"], cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
  first = process.stdout.readline()
  match = re.fullmatch(r"Serving .* at http://127\.0\.0\.1:(\d+)/ \(Ctrl-C to stop\)\n", first)
  if not match:
    process.kill()
    pytest.fail(f"no start-up line: {first!r}; log: {log_path.read_text()[-2000:]}")
  yield types.SimpleNamespace(host="127.0.0.1", port=int(match.group(1)), log=log_path,
                              process=process)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=30)
  assert process.returncode == 0, log_path.read_text()[-2000:]
  assert out == "Stopped.\n"
  assert "Traceback" not in log_path.read_text()


def call(server, method, path, body=None, headers=None, timeout=30):
  """One request on a fresh connection: (status, headers, body bytes)."""
  connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
  try:
    if isinstance(body, (dict, list)):
      body = json.dumps(body)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()
  finally:
    connection.close()


def call_json(server, method, path, body=None, headers=None):
  status, headers, data = call(server, method, path, body, headers)
  assert headers["Content-Type"] == "application/json", (status, data[:200])
  return status, json.loads(data)


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


# --- TensorFlow Serving's API ---------------------------------------------------------------


def test_model_status_and_metadata(server, exported):
  expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
      "error_code": "OK", "error_message": ""}}]}
  assert call_json(server, "GET", "/v1/models/mnist") == (200, expected)
  assert call_json(server, "GET", "/v1/models/mnist/versions/1") == (200, expected)

  status, metadata = call_json(server, "GET", "/v1/models/mnist/metadata")
  assert status == 200
  assert metadata["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
  signatures = metadata["metadata"]["signature_def"]["signature_def"]
  assert signatures["serving_default"]["inputs"]["images"]["dtype"] in ("DT_UINT8", "DT_FLOAT")
  signature = signatures[exported.uint8_key]
  assert signature["method_name"] == "tensorflow/serving/predict"
  images = signature["inputs"]["images"]
  assert images["dtype"] == "DT_UINT8"
  assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
  assert signature["outputs"]["classes"]["dtype"] == "DT_INT64"
  assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"


def test_predict_in_row_and_columnar_format(server, exported):
  images = exported.test.images[:3]
  expected = exported.serve(images=tf.constant(images))
  classes = expected["classes"].numpy().tolist()
  probabilities = expected["probabilities"].numpy()
  pixels = images.tolist()
  default = exported.loaded.signatures["serving_default"].structured_input_signature[1]
  # What the default signature takes: the same pixels, or as floats in [0, 1].
  default_pixels = pixels if default["images"].dtype == tf.uint8 else (images / 255).tolist()

  for body in ({"instances": default_pixels},
               {"instances": [{"images": p} for p in default_pixels]},
               {"signature_name": exported.uint8_key, "instances": pixels}):
    status, answer = call_json(server, "POST", "/v1/models/mnist:predict", body)
    assert status == 200, answer
    rows = answer["predictions"]
    assert [row["classes"] for row in rows] == classes
    np.testing.assert_allclose([row["probabilities"] for row in rows], probabilities,
                               rtol=1e-5, atol=1e-6)

  for body in ({"inputs": default_pixels},
               {"signature_name": exported.uint8_key, "inputs": {"images": pixels}}):
    status, answer = call_json(server, "POST", "/v1/models/mnist/versions/1:predict", body)
    assert status == 200, answer
    assert answer["outputs"]["classes"] == classes
    np.testing.assert_allclose(answer["outputs"]["probabilities"], probabilities,
                               rtol=1e-5, atol=1e-6)
  # A trained model: the answers are mostly the labels.
  assert np.mean(np.array(classes) == exported.test.labels[:3]) >= 2 / 3


def test_float_outputs_are_the_shortest_float32_decimals(server, exported):
  body = {"signature_name": exported.uint8_key, "instances": exported.test.images[:1].tolist()}
  _, _, data = call(server, "POST", "/v1/models/mnist:predict", json.dumps(body))
  numbers = re.findall(r"\d\.\d+(?:e-\d+)?", data.decode())
  # As TF Serving writes them: 0.1, not 0.10000000149011612.
  assert len(numbers) == 10 and all(str(np.float32(n)) == n for n in numbers), numbers


IMAGE = np.zeros((28, 28, 1), np.uint8).tolist()


def _nested(depth):
  return "[" * depth + "]" * depth


BAD_REQUESTS = {
    # name: (method, path, body, status, error regex)
    "malformed_json": ("POST", "/v1/models/mnist:predict", '{"instances": [1, 2',
                       400, r"^JSON Parse error: Expecting"),
    "not_utf8": ("POST", "/v1/models/mnist:predict", b"\xff\xfe{}", 400, r"not UTF-8"),
    "not_an_object": ("POST", "/v1/models/mnist:predict", "[1, 2]", 400, r"JSON object"),
    "no_key": ("POST", "/v1/models/mnist:predict", {}, 400, r"Missing 'inputs' or 'instances'"),
    "both_keys": ("POST", "/v1/models/mnist:predict", {"instances": [IMAGE], "inputs": [IMAGE]},
                  400, r"only one of 'inputs' or 'instances'"),
    "float_pixels": ("POST", "/v1/models/mnist:predict",
                     {"instances": [(np.ones((28, 28, 1)) * 0.5).tolist()]},
                     400, r"JSON Value: 0\.5 Type: Number is not of expected type: uint8.*"
                     r"multiply \[0, 1\] floats by 255"),
    "whole_floats": ("POST", "/v1/models/mnist:predict",
                     '{"signature_name": "%U8%", "inputs": [[[[0], [1.0]]]]}', 400,
                     r"JSON Value: 1\.0 Type: Number is not of expected type: uint8"),
    "nan": ("POST", "/v1/models/mnist:predict",
            '{"signature_name": "%U8%", "instances": [[[[NaN]]]]}', 400,
            r"JSON Value: NaN Type: Number is not of expected type: uint8"),
    "unscaled_to_float_default": (
        "POST", "/v1/models/mnist:predict",
        {"signature_name": "serving_default", "instances": [np.full((28, 28, 1), 255).tolist()]},
        400, r"^images must be float32 pixels in \[0, 1\] .*serving_uint8 signature$"),
    "too_large": ("POST", "/v1/models/mnist:predict",
                  {"instances": [np.full((28, 28, 1), 256).tolist()]}, 400,
                  r"^instances\[0\]\[0\]\[0\]\[0\]: 256 is outside uint8's range 0\.\.255$"),
    "negative": ("POST", "/v1/models/mnist:predict", {"inputs": [IMAGE[:27] + [[[-1]] * 28]]},
                 400, r"^inputs\[0\]\[27\]\[0\]\[0\]: -1 is outside uint8's range"),
    "beyond_int64": ("POST", "/v1/models/mnist:predict", {"instances": [[[[2**70, -1]]]]}, 400,
                     r"1180591620717411303424 is outside uint8's range"),
    "bool": ("POST", "/v1/models/mnist:predict", {"instances": [[[[True]] * 28] * 28]}, 400,
             r"JSON Value: true Type: Bool is not of expected type: uint8"),
    "string": ("POST", "/v1/models/mnist:predict", {"instances": [[[["7"]] * 28] * 28]}, 400,
               r"JSON Value: \"7\" Type: String is not of expected type: uint8"),
    "no_channel": ("POST", "/v1/models/mnist:predict",
                   {"instances": [np.zeros((28, 28), int).tolist()]}, 400,
                   r"instances has shape \[1, 28, 28\]; input 'images' takes "
                   r"\[batch, 28, 28, 1\] uint8 \(each instance is one \[28, 28, 1\] image\)"),
    "flat": ("POST", "/v1/models/mnist:predict", {"inputs": [[0] * 784]}, 400,
             r"inputs has shape \[1, 784\]"),
    "ragged": ("POST", "/v1/models/mnist:predict", {"instances": [IMAGE, IMAGE[:27]]}, 400,
               r"not a rectangular"),
    "empty": ("POST", "/v1/models/mnist:predict", {"instances": []}, 400, r"'instances' is empty"),
    "too_many": ("POST", "/v1/models/mnist:predict",
                 {"instances": [0] * (rest.MAX_INSTANCES + 1)}, 400, r"at most 1024"),
    "deep": ("POST", "/v1/models/mnist:predict", '{"instances": ' + _nested(100_000) + "}",
             400, r"nested too deeply"),
    "other_input": ("POST", "/v1/models/mnist:predict", {"inputs": {"pixels": [IMAGE]}}, 400,
                    r"inputs names \['pixels'\]; the signature's inputs are \['images'\]"),
    "b64_instance": ("POST", "/v1/models/mnist:predict", {"instances": [{"b64": "iVBORw0KGgo="}]},
                     400, r"^instances\[0\]: base64 \{\"b64\": \.\.\.\} values are for string "
                     r"inputs; .* POST an image file \(PNG, JPEG, \.\.\.\) to /api/image instead$"),
    "b64_input": ("POST", "/v1/models/mnist:predict", {"inputs": {"images": [{"b64": "iVBO"}]}},
                  400, r"Type: Object is not of expected type: uint8 .*to /api/image instead$"),
    "signature": ("POST", "/v1/models/mnist:predict", {"signature_name": "nope",
                                                      "instances": [IMAGE]},
                  400, r"Serving signature name: \"nope\" not found"),
    "signature_type": ("POST", "/v1/models/mnist:predict", {"signature_name": 3,
                                                           "instances": [IMAGE]},
                       400, r"'signature_name' key must be a string"),
    "other_model": ("POST", "/v1/models/half:predict", {"instances": [IMAGE]}, 404,
                    r"^Servable not found for request: Latest\(half\); this server serves "
                    r"\"mnist\"$"),
    "other_version": ("GET", "/v1/models/mnist/versions/2", None, 404,
                      r"^Servable not found for request: Specific\(mnist, 2\); this server "
                      r"serves \"mnist\" version 1 only$"),
    "unknown_path": ("GET", "/robots.txt", None, 404, r"no such page or endpoint: /robots.txt"),
    "control_characters": ("GET", "/a%0Ab%1B[31m", None, 404,
                           r"^no such page or endpoint: /a\\x0ab\\x1b\[31m;"),
    "traversal": ("GET", "/static/../rest.py", None, 404, r"no such page"),
    "encoded_traversal": ("GET", "/static/%2e%2e/rest.py", None, 404, r"no such page"),
    "absolute": ("GET", "/static//etc/passwd", None, 404, r"no such page"),
    "get_predict": ("GET", "/v1/models/mnist:predict", None, 405, r"GET is not allowed on "
                    r"/v1/models/mnist:predict; use POST"),
    "huge_body": ("POST", "/v1/models/mnist:predict", b" " * (17 * 2**20), 413,
                  r"larger than the 16 MiB limit"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_one_line_json_error(server, exported, name):
  method, path, body, expected_status, pattern = BAD_REQUESTS[name]
  # Pixel checks go to the uint8 signature (the default one may take floats).
  if isinstance(body, dict) and path.endswith(":predict") and "signature_name" not in body:
    body = {"signature_name": exported.uint8_key, **body}
  elif isinstance(body, str):
    body = body.replace("%U8%", exported.uint8_key)
  status, headers, data = call(server, method, path, body)
  assert status == expected_status, data[:300]
  assert headers["Content-Type"] == "application/json"
  answer = json.loads(data)
  assert list(answer) == ["error"]
  assert "\n" not in answer["error"] and re.search(pattern, answer["error"]), answer["error"]
  assert b"import" not in data  # no file outside the static folder
  # And it keeps serving.
  assert call(server, "GET", "/v1/models/mnist")[0] == 200


# --- Our image endpoint ---------------------------------------------------------------------


def test_image_endpoint_reads_files_exactly_as_predict_does(server, exported, tmp_path):
  classifier = predict.Classifier(exported.export_dir)
  digits = exported.test.images[:4, ..., 0]
  files = {
      "digit.png": (lambda: Image.fromarray(digits[0]), "image/png"),
      "inverted.jpg": (lambda: Image.fromarray(255 - digits[1]).convert("RGB").resize(
          (200, 200)), "image/jpeg"),
      "paper.bmp": (lambda: Image.fromarray(255 - digits[2]).resize((90, 120)), "image/bmp"),
  }
  for i, (name, (make, mime)) in enumerate(files.items()):
    path = tmp_path / name
    make().save(path)
    data = path.read_bytes()
    if i % 2:  # a browser form: multipart
      boundary = uuid.uuid4().hex
      body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
              f"filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n").encode() + data + (
                  f"\r\n--{boundary}--\r\n").encode()
      headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    else:  # curl --data-binary @file
      body, headers = data, {"Content-Type": mime}
    status, answer = call_json(server, "POST", "/api/image", body, headers)
    assert status == 200, answer
    expected_image, expected_info = preprocess.prepare(str(path))
    np.testing.assert_array_equal(np.array(answer["image"], np.uint8), expected_image[..., 0])
    expected = classifier.probabilities(expected_image[np.newaxis])[0]
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-6, atol=1e-7)
    assert answer["class"] == int(expected.argmax())
    assert sorted(answer) == ["class", "image", "info", "probabilities"]
    assert answer["info"] == json.loads(json.dumps(expected_info))  # e.g. where the digit is


@pytest.mark.parametrize("body, headers, pattern", [
    (b"", {}, r"^no image in the request"),
    (b"hello, not an image", {"Content-Type": "image/png"}, r"^not a PNG, JPEG, .* image$"),
    ("truncated", {"Content-Type": "image/png"}, r"^cannot decode the image"),
    ("blank", {"Content-Type": "image/png"}, r"^no digit found"),
    ("two_files", None, r"^the form holds 2 files; send exactly one image"),
])
def test_image_endpoint_refuses_what_is_not_one_digit_image(server, exported, body, headers,
                                                             pattern):
  digit = _png(exported.test.images[0, ..., 0])
  if body == "truncated":
    body = digit[:60]
  elif body == "blank":
    body = _png(np.full((40, 40), 255, np.uint8))
  elif body == "two_files":
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{{}}\"; "
            f"filename=\"d.png\"\r\nContent-Type: image/png\r\n\r\n")
    body = (part.format(1).encode() + digit + b"\r\n" + part.format(2).encode() + digit +
            f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
  status, answer = call_json(server, "POST", "/api/image", body, headers)
  assert status == 400 and re.search(pattern, answer["error"]), answer
  assert "\n" not in answer["error"]


# --- The server ------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_answers(server, exported):
  images = exported.test.images[:24]
  expected = exported.serve(images=tf.constant(images))["classes"].numpy().tolist()

  def client(i):
    if i % 3 == 0:
      status, answer = call_json(server, "POST", "/api/image", _png(images[i, ..., 0]),
                                 {"Content-Type": "image/png"})
      return status, answer["probabilities"].index(max(answer["probabilities"]))
    status, answer = call_json(server, "POST", "/v1/models/mnist:predict",
                               {"signature_name": exported.uint8_key,
                                "instances": [images[i].tolist()]})
    return status, answer["predictions"][0]["classes"]

  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    results = list(pool.map(client, range(len(images))))
  assert all(status == 200 for status, _ in results)
  predicted = [c for _, c in results]
  for i in range(len(images)):
    if i % 3:  # the pixels as they are: exactly the model's answer
      assert predicted[i] == expected[i]
  assert np.mean(np.array(predicted) == exported.test.labels[:24]) > 0.8


def test_a_stalled_client_does_not_block_the_others(server):
  stalled = socket.create_connection((server.host, server.port), timeout=10)
  try:
    stalled.sendall(b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n{\"instances\": [")
    for _ in range(3):
      assert call(server, "GET", "/v1/models/mnist", timeout=10)[0] == 200
  finally:
    stalled.close()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n",
])
def test_broken_http_is_refused_and_the_server_goes_on(server, raw):
  """Below the API: waitress answers malformed HTTP with its own 400 (plain text)."""
  with socket.create_connection((server.host, server.port), timeout=10) as connection:
    connection.sendall(raw)
    answer = connection.recv(4096)
  assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
  assert call(server, "GET", "/v1/models/mnist")[0] == 200


def test_one_log_line_per_request(server):
  tag = uuid.uuid4().hex
  # A newline in the URL stays in its line, escaped.
  assert call(server, "GET", f"/no-such-page-{tag}%0Aforged")[0] == 404
  assert call(server, "GET", "/v1/models/mnist")[0] == 200
  deadline = time.monotonic() + 5
  while time.monotonic() < deadline:
    lines = server.log.read_text().splitlines()
    mine = [line for line in lines if tag in line]
    if mine:
      break
    time.sleep(0.05)
  assert len(mine) == 1, mine
  match = LOG_LINE.match(mine[0])
  assert match and match.group(2) == f"/no-such-page-{tag}\\x0aforged", mine[0]
  assert match.group(3) == "404"
  assert not [line for line in lines if line.startswith("forged")]
  assert match.group(4).startswith(" error: no such page or endpoint")
  requests = [line for line in lines if LOG_LINE.match(line)]
  assert len(requests) >= 3


def test_the_page_and_its_files_need_no_network(server):
  status, headers, page = call(server, "GET", "/")
  assert status == 200 and headers["Content-Type"].startswith("text/html")
  assert b'<canvas id="canvas"' in page
  for name in ("app.js", "style.css"):
    status, _, data = call(server, "GET", f"/static/{name}")
    assert status == 200 and len(data) > 500
    assert not re.search(rb"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", data), name
  assert not re.search(rb"(src|href)=\"(https?:)?//", page)


def test_the_page_has_an_icon_and_favicon_ico_is_no_error(server):
  status, _, page = call(server, "GET", "/")
  assert b'<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
  status, headers, icon = call(server, "GET", "/static/favicon.svg")
  assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
  assert icon.startswith(b"<svg ") and len(icon) < 1000
  # Its one URL is SVG's namespace name, which nothing fetches.
  assert re.findall(rb"https?://[^\"]*", icon) == [b"http://www.w3.org/2000/svg"]
  # What a browser asks for on a page without an icon link (a JSON answer in a tab).
  status, _, data = call(server, "GET", "/favicon.ico")
  assert status == 204 and data == b""


def test_command_refuses_a_busy_port_in_one_line(exported):
  busy = socket.socket()
  busy.bind(("127.0.0.1", 0))
  busy.listen()
  port = busy.getsockname()[1]
  try:
    result = subprocess.run(
        [sys.executable, "-m", "mnist_tf2.serve", f"--export_dir={exported.export_dir}",
         f"--port={port}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  finally:
    busy.close()
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
                    "choose another --port (0 picks a free one)"]
  assert "Traceback" not in result.stderr and result.stdout == ""


def test_load_test_script_against_the_server(server):
  script = os.path.join(REPO, "scripts", "load_test.py")
  result = subprocess.run(
      [sys.executable, script, f"--url=http://127.0.0.1:{server.port}", "--clients=1,3",
       "--seconds=1", "--warmup=2", f"--server_pid={server.process.pid}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = re.findall(r"^\| (\d+) \| (\d+) \| \d+ \| [\d.]+ \| [\d.]+ \| (\d+) \| [\d.]+% \| "
                    r"[\d.]+ \|$", result.stdout, re.M)
  assert [(clients, errors) for clients, _, errors in rows] == [("1", "0"), ("3", "0")]
  assert all(int(requests) > 0 for _, requests, _ in rows)

  # Without --server_pid the CPU column says it was not measured, not "nan".
  unmeasured = subprocess.run(
      [sys.executable, script, f"--url=http://127.0.0.1:{server.port}", "--clients=1",
       "--seconds=0.5", "--warmup=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert unmeasured.returncode == 0, unmeasured.stderr[-2000:]
  assert re.search(r"^\| 1 \| \d+ \| .*% \| - \|$", unmeasured.stdout, re.M), unmeasured.stdout
  assert "nan" not in unmeasured.stdout

  elsewhere = subprocess.run([sys.executable, script, "--url=http://192.0.2.1:8501"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
  assert elsewhere.returncode != 0
  assert "not on this machine (loopback addresses only)" in elsewhere.stderr


def test_load_test_script_help_and_bad_urls():
  script = os.path.join(REPO, "scripts", "load_test.py")

  def load_test(*args):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)

  shown = load_test("--help")
  assert shown.returncode == 0
  for default in ("http://127.0.0.1:8501", "1,8,32", "20.0", "mnist", "predict"):
    assert f"(default: {default})" in " ".join(shown.stdout.split()), default
  for url, message in [
      ("http://no-such-host.invalid:8501",
       "error: cannot resolve host no-such-host.invalid of --url=http://no-such-host.invalid:8501: "),
      ("http://127.0.0.1:99999", "error: --url=http://127.0.0.1:99999 has no valid port")]:
    result = load_test(f"--url={url}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(message), line


# --- LiteRT ---------------------------------------------------------------------------------


def test_litert_float_and_int8_exports_classify_like_the_saved_model(exported, tmp_path, capsys):
  if not litert.interpreter_available():
    pytest.skip("the LiteRT interpreter (ai-edge-litert, in the dev extra) is not installed")
  target = tmp_path / "litert"
  float_path, restored = litert.export_workdir(exported.workdir, str(target))
  same = litert.compare_with_saved_model(float_path, restored)
  assert same["examples"] == 10_000 and same["differing_classes"] == 0
  assert same["litert_accuracy"] == same["saved_model_accuracy"] > 0.9

  # int8 through the command's code (export --format=litert --quantize=int8).
  flag_values = types.SimpleNamespace(workdir=exported.workdir, export_dir=str(target),
                                      quantize="int8", overwrite=False)
  capsys.readouterr()
  litert.main(flag_values)
  out = capsys.readouterr().out
  int8_path = str(target / "model_int8.tflite")
  assert f"as int8 LiteRT to {int8_path} (" in out
  match = re.search(r"on 10,000 test images: accuracy (\d+\.\d\d)% \(SavedModel "
                    r"(\d+\.\d\d)%\), (\d+) class(es)? differs?", out)
  assert match, out
  assert abs(float(match.group(1)) - float(match.group(2))) <= 0.5 and int(match.group(3)) <= 100
  assert sorted(os.listdir(target)) == ["model.tflite", "model_int8.tflite"]
  assert os.stat(float_path).st_mode & 0o044  # readable by others, as any exported model
  # Its only signature, the one docs/SERVING.md tells a device to call.
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  runner_names = Interpreter(model_path=float_path).get_signature_list()
  assert runner_names == {"serving_uint8": {"inputs": ["images"],
                                            "outputs": ["classes", "probabilities"]}}
  assert os.path.getsize(int8_path) < 0.35 * os.path.getsize(float_path)

  before = open(int8_path, "rb").read()
  with pytest.raises(UserError, match=r"model_int8.tflite exists; pass --overwrite"):
    litert.export_workdir(exported.workdir, str(target), quantize="int8")
  assert open(int8_path, "rb").read() == before


# --- The page in a real browser --------------------------------------------------------------

# Headless Chromium flags that work in a sandbox without a display, GPU or network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1000,760"]


@pytest.fixture
def browser(tmp_path):
  """Selenium driving Debian's chromium; a skip on a laptop without it, a failure in CI."""
  missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.chrome.service import Service
  except ImportError:
    missing.append("selenium (pip install -e '.[dev]')")
  if missing:
    message = f"no browser to test the page with: {', '.join(missing)} missing"
    if os.environ.get("CI") == "true":
      pytest.fail(message + "; .ci/run installs them (apt-get install chromium chromium-driver)")
    pytest.skip(message)
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for get_log
  for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
  driver.set_page_load_timeout(30)
  yield driver
  driver.quit()


def _wait_for_answer(driver, answers_before, timeout=20):
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  WebDriverWait(driver, timeout, poll_frequency=0.05).until(
      lambda d: d.execute_script(
          "return document.body.dataset.busy === '0' && "
          "Number(document.body.dataset.answers) > arguments[0]", answers_before))
  return int(driver.execute_script("return document.body.dataset.answers"))


def _shown(driver):
  """(top class shown, [ten bar probabilities], class of the top bar, ink in the 28x28 view)."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
  probabilities = [float(bar.get_attribute("data-probability")) for bar in bars]
  top = [int(bar.get_attribute("data-digit")) for bar in bars
         if "top" in bar.get_attribute("class").split()]
  ink = driver.execute_script(
      "const c = document.getElementById('input28').getContext('2d');"
      "return c.getImageData(0, 0, 28, 28).data.filter((v, i) => i % 4 == 0)"
      ".reduce((a, b) => a + b, 0);")
  return driver.find_element(By.ID, "prediction").text, probabilities, top, ink


def _draw(driver, strokes, pointer="mouse"):
  """Draws each stroke, a list of (x, y) offsets from the canvas centre, with a mouse or finger."""
  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.actions import interaction
  from selenium.webdriver.common.actions.action_builder import ActionBuilder
  from selenium.webdriver.common.actions.pointer_input import PointerInput
  from selenium.webdriver.common.by import By
  canvas = driver.find_element(By.ID, "canvas")
  kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE
  for stroke in strokes:
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=15)
    actions.pointer_action.move_to(canvas, *stroke[0]).pointer_down()
    for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
      steps = 8
      for _ in range(steps):
        actions.pointer_action.move_by(round((x1 - x0) / steps), round((y1 - y0) / steps))
    actions.pointer_action.pointer_up()
    actions.perform()


def _check_page_reads(driver, digit, answers):
  answers = _wait_for_answer(driver, answers)
  shown, probabilities, top, ink = _shown(driver)
  assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3, probabilities
  assert shown == str(digit), (shown, probabilities)
  assert top == [digit] and max(probabilities) == probabilities[digit]
  assert ink > 0  # the 28x28 input is shown
  return answers


def test_the_page_reads_digits_drawn_with_the_mouse_and_uploaded(server, exported, browser,
                                                                  tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  browser.get(f"http://{server.host}:{server.port}/")
  assert browser.title == "mnist_tf2: draw a digit"
  # No failed request (e.g. a 404 for /favicon.ico) or script error in the console.
  assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
  answers = 0

  _draw(browser, [[(0, -110), (0, 110)]])  # a "1": one stroke down
  answers = _check_page_reads(browser, 1, answers)

  browser.find_element(By.ID, "clear").click()
  shown, probabilities, _, ink = _shown(browser)
  assert shown == "\u2013" and probabilities == [0.0] * 10 and ink == 0

  # A "7": the bar, then the downstroke, as two strokes.
  _draw(browser, [[(-85, -100), (85, -100)], [(85, -100), (-15, 115)]])
  answers = _check_page_reads(browser, 7, answers)
  browser.save_screenshot(str(tmp_path / "drawn_7.png"))

  # An image file, dark ink on light paper, through the file chooser.
  classes = exported.serve(images=tf.constant(exported.test.images[:20]))["classes"].numpy()
  labels = exported.test.labels[:20]
  index = int(np.flatnonzero((classes == labels) & (labels != 1) & (labels != 7))[0])
  label = int(exported.test.labels[index])
  path = tmp_path / "digit.png"
  Image.fromarray(255 - exported.test.images[index, ..., 0]).resize((112, 112)).save(path)
  browser.find_element(By.ID, "file").send_keys(str(path))
  answers = _check_page_reads(browser, label, answers)

  browser.find_element(By.ID, "clear").click()
  _draw(browser, [[(0, -110), (0, 110)]], pointer="touch")  # a "1" with a finger
  _check_page_reads(browser, 1, answers)

  # The icon is fetched on its own time: by now it has been. (A 400 from /api/image is
  # the page at work: a stroke too small to be a digit yet.)
  severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
  assert [m for m in severe if "/api/image " not in m] == [], severe
  screenshot = tmp_path / "page.png"
  assert browser.save_screenshot(str(screenshot))
  with Image.open(screenshot) as image:
    assert image.size[0] >= 900 and image.getextrema() != ((255, 255), (255, 255), (255, 255))
