"""The HTTP application behind `python -m mnist_tf2.serve` (a WSGI app).

`ModelServer` answers TensorFlow Serving's REST API (`mnist_tf2.rest`),
`POST /api/image` and the page in `static/`; every refusal is a 4xx with a
one-line {"error": "..."}. It writes one log line per request.
"""

import json
import os
import re
import sys
import time
import traceback

import numpy as np
import tensorflow as tf
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter
from werkzeug.routing import Map
from werkzeug.routing import Rule
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from mnist_tf2 import batching
from mnist_tf2 import predict
from mnist_tf2 import preprocess
from mnist_tf2 import rest
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# A batch of MAX_INSTANCES images as JSON is ~3 MiB; a photo of a digit rarely 10.
MAX_BODY_BYTES = 16 * 2**20

_ROUTES = [
    Rule("/", endpoint="index", methods=["GET"]),
    Rule("/favicon.ico", endpoint="favicon", methods=["GET"]),
    Rule("/static/<path:path>", endpoint="static", methods=["GET"]),
    Rule("/api/image", endpoint="image", methods=["POST"]),
]
for _prefix in ("/v1/models/<part:name>", "/v1/models/<part:name>/versions/<part:version>"):
  _ROUTES += [Rule(_prefix, endpoint="status", methods=["GET"]),
              Rule(f"{_prefix}/metadata", endpoint="metadata", methods=["GET"]),
              Rule(f"{_prefix}:predict", endpoint="predict", methods=["POST"])]


class PathPart(BaseConverter):
  """A model name or version: up to the next '/' or ':' (as in NAME:predict)."""
  regex = "[^/:]+"


class LimitedRequest(Request):
  """Refuses (413) bodies over MAX_BODY_BYTES before reading them."""
  max_content_length = MAX_BODY_BYTES
  max_form_memory_size = MAX_BODY_BYTES
  max_form_parts = 16


def printable(text: str) -> str:
  """`text` with control characters escaped: a URL's %0A must not split a log line."""
  return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def json_response(value, status: int = 200) -> Response:
  return Response(json.dumps(value), status=status, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
  response = json_response({"error": message}, status)
  response.error = message  # for the log line
  return response


class ModelServer:
  """The WSGI application: the model's REST API, the image endpoint and the page."""

  def __init__(self, export_dir: str, model_name: str = "mnist", log=sys.stderr):
    self.classifier = predict.Classifier(export_dir)
    signatures = self.classifier.loaded.signatures
    self.signatures = {key: signatures[key] for key in signatures.keys()}
    # The signature predict reads image files with (uint8 pixels).
    self.image_signature = next(key for key, function in self.signatures.items()
                                if function is self.classifier.signature)
    self.batchers = {key: batching.Batcher(function) for key, function in self.signatures.items()}
    self.metadata = rest.model_metadata(export_dir, model_name)
    self.model_name = model_name
    # merge_slashes=False: "/static//etc/passwd" is refused, not redirected.
    self.urls = Map(_ROUTES, converters={"part": PathPart}, merge_slashes=False)
    self.log = log

  def __call__(self, environ, start_response):
    start = time.perf_counter()
    request = LimitedRequest(environ)
    response = self.dispatch(request)
    if self.log:
      milliseconds = (time.perf_counter() - start) * 1000
      error = getattr(response, "error", None)
      self.log.write(
          f"{time.strftime('%Y-%m-%d %H:%M:%S')} {request.remote_addr} \"{request.method} "
          f"{printable(request.path)}\" {response.status_code} {response.content_length or 0}B "
          f"{milliseconds:.1f}ms" + (f" error: {error}" if error else "") + "\n")
      self.log.flush()
    return response(environ, start_response)

  def dispatch(self, request: Request) -> Response:
    try:
      endpoint, arguments = self.urls.bind_to_environ(request.environ).match()
      return getattr(self, f"on_{endpoint}")(request, **arguments)
    except rest.RequestError as e:
      return error_response(e.status, str(e))
    except UserError as e:
      return error_response(400, str(e))
    except HTTPException as e:
      return error_response(e.code, _http_error_message(e, request))
    except Exception as e:  # pylint: disable=broad-except
      # A bug of ours: say so in one line, keep serving, leave the trace in the log.
      traceback.print_exc(file=self.log or sys.stderr)
      return error_response(500, f"internal error: {type(e).__name__}: {first_line(e)}")

  def on_index(self, request):
    return send_from_directory(STATIC_DIR, "index.html", request.environ)

  def on_favicon(self, request):
    # Browsers ask for it on any page without an icon link (a JSON answer opened in a
    # tab); a 404 there is a console error. The page links static/favicon.svg instead.
    return Response(status=204)

  def on_static(self, request, path):
    return send_from_directory(STATIC_DIR, path, request.environ)

  def _check_servable(self, name, version):
    # TF Serving's words (its clients may look for them), then what is served here.
    if name != self.model_name:
      raise rest.RequestError(f"Servable not found for request: Latest({name}); this server "
                              f"serves \"{self.model_name}\"", 404)
    if version is not None and version != rest.MODEL_VERSION:
      raise rest.RequestError(
          f"Servable not found for request: Specific({name}, {version}); this server serves "
          f"\"{self.model_name}\" version {rest.MODEL_VERSION} only", 404)

  def on_status(self, request, name, version=None):
    self._check_servable(name, version)
    return json_response(rest.model_status())

  def on_metadata(self, request, name, version=None):
    self._check_servable(name, version)
    return json_response(self.metadata)

  def on_predict(self, request, name, version=None):
    self._check_servable(name, version)
    body = request.get_data(cache=False, parse_form_data=False)
    signature_name, inputs, row_format = rest.parse_predict(body, self.signatures)
    try:
      outputs = self.batchers[signature_name](inputs)
    except tf.errors.InvalidArgumentError as e:
      # The signature's own checks (e.g. on pixel ranges) refused the input.
      raise rest.RequestError(_refusal(e)) from None
    return json_response(rest.predict_response(outputs, row_format))

  def on_image(self, request):
    # The one code path image files take, here and in `python -m mnist_tf2.predict`.
    image, info = preprocess.prepare(upload_bytes(request))
    outputs = self.batchers[self.image_signature]({"images": image[np.newaxis]})
    probabilities = outputs["probabilities"][0]
    return json_response({
        "class": int(np.argmax(probabilities)),
        "probabilities": rest.json_values(probabilities),
        "image": image[..., 0].tolist(),
        "info": info})


def _refusal(error) -> str:
  """The message of a signature's own check (tf.debugging.Assert) in one line."""
  # The error's first line is TensorFlow's "Graph execution error:"; the check's
  # own words follow as "assertion failed: [message]".
  found = re.search(r"assertion failed: \[(.*)\]", error.message or "")
  return found.group(1) if found else first_line(error)


def upload_bytes(request: Request) -> bytes:
  """The uploaded file: the only file of a multipart form, or else the raw body."""
  if request.mimetype == "multipart/form-data":
    files = list(request.files.values())
    if len(files) != 1:
      raise rest.RequestError(f"the form holds {len(files)} files; send exactly one image")
    data = files[0].read()
  else:
    data = request.get_data(cache=False, parse_form_data=False)
  if not data:
    raise rest.RequestError("no image in the request: send an image file as the body or as "
                            "a multipart form field")
  return data


def _http_error_message(error: HTTPException, request: Request) -> str:
  path = printable(request.path)
  if error.code == 404:
    return (f"no such page or endpoint: {path}; this server answers GET /, "
            "GET /v1/models/NAME[/metadata], POST /v1/models/NAME:predict, POST /api/image")
  if error.code == 405:
    allowed = ", ".join(sorted(set(getattr(error, "valid_methods", None) or [])))
    return f"{request.method} is not allowed on {path}; use {allowed}"
  if error.code == 413:
    return (f"the request body is larger than the {MAX_BODY_BYTES // 2**20} MiB limit")
  return f"{error.name}: {error.description}".splitlines()[0]
