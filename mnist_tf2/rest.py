"""TensorFlow Serving's REST API format over a SavedModel's signatures.

The request and response bodies of https://www.tensorflow.org/tfx/serving/api_rest,
so a client written for TensorFlow Serving talks to `mnist_tf2.serve` unchanged:

  GET  /v1/models/NAME[/versions/1]           -> {"model_version_status": [...]}
  GET  /v1/models/NAME[/versions/1]/metadata  -> {"model_spec": ..., "metadata": ...}
  POST /v1/models/NAME[/versions/1]:predict   {"instances": rows} -> {"predictions": ...}
                                              {"inputs": columns} -> {"outputs": ...}

Values are checked against the signature's TensorSpecs with TensorFlow
Serving's JSON rules (an integer input takes JSON integers only, so a float
pixel 0.5 is refused instead of becoming 0) plus the dtype's range (300 is not
a uint8; TensorFlow Serving would wrap it). Every refusal is a `RequestError`
whose message is one line: the `{"error": ...}` of a 400.
"""

import json
import math
import os

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from mnist_tf2.errors import UserError

MODEL_VERSION = "1"  # An export directory holds one model; TF Serving numbers it.
MAX_INSTANCES = 1024  # per request; bounds the memory one request can take


class RequestError(UserError):
  """A request the server refuses; `status` is the HTTP status (4xx)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


# --- Model status and metadata -------------------------------------------------------------


def model_status() -> dict:
  """GetModelStatusResponse as JSON: the one version, loaded."""
  return {"model_version_status": [{
      "version": MODEL_VERSION, "state": "AVAILABLE",
      "status": {"error_code": "OK", "error_message": ""}}]}


def model_metadata(export_dir: str, model_name: str) -> dict:
  """GetModelMetadataResponse as JSON: the SavedModel's SignatureDefs, as stored.

  Raises:
    UserError: saved_model.pb cannot be read (a .pbtxt export is not supported).
  """
  path = os.path.join(export_dir, "saved_model.pb")
  try:
    with open(path, "rb") as f:
      saved_model = saved_model_pb2.SavedModel.FromString(f.read())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read the signatures in {path}: {e}") from None
  meta_graph = next(g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags)
  signatures = {
      key: json_format.MessageToDict(signature, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
      for key, signature in sorted(meta_graph.signature_def.items())}
  return {"model_spec": {"name": model_name, "signature_name": "", "version": MODEL_VERSION},
          "metadata": {"signature_def": {"signature_def": signatures}}}


# --- Predict requests ----------------------------------------------------------------------


def parse_json(body: bytes):
  """The request body as a JSON value; NaN and Infinity are accepted, as TF Serving does."""
  try:
    # Decoded here: json.loads would also take UTF-16 and UTF-32 bytes.
    return json.loads(body.decode("utf-8"))
  except UnicodeDecodeError:
    raise RequestError("JSON Parse error: the body is not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise RequestError(f"JSON Parse error: {e.msg} at line {e.lineno} column {e.colno}") from None
  except RecursionError:
    raise RequestError("JSON Parse error: nested too deeply") from None


def parse_predict(body: bytes, signatures: dict) -> tuple[str, dict, bool]:
  """Reads a predict request against `signatures` (name -> ConcreteFunction).

  Returns:
    (signature name, {input name: numpy array of the input's dtype and shape},
    whether the request was in row ("instances") format).

  Raises:
    RequestError: anything about the request that does not fit the signature.
  """
  request = parse_json(body)
  if not isinstance(request, dict):
    raise RequestError("the request must be a JSON object with an \"instances\" or an "
                       "\"inputs\" key")
  name = request.get("signature_name", "serving_default")
  if not isinstance(name, str):
    raise RequestError(f"JSON Value: {json.dumps(name)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
  if name not in signatures:
    raise RequestError(f"Serving signature name: \"{name}\" not found in signature def; "
                       f"this model has: {', '.join(sorted(signatures))}")
  if ("instances" in request) == ("inputs" in request):
    raise RequestError("Missing 'inputs' or 'instances' key" if "inputs" not in request else
                       "Not formatted correctly expecting only one of 'inputs' or "
                       "'instances' keys exclusively")
  specs = signatures[name].structured_input_signature[1]
  # json turns true/false into bools, which numpy would quietly take as 1/0.
  check_bools = b"true" in body or b"false" in body
  if "instances" in request:
    columns = _rows_to_columns(request["instances"], specs)
    where = "instances"
  else:
    columns = _named(request["inputs"], specs, "inputs")
    where = "inputs"
  arrays = {}
  for key, value in columns.items():
    named = f"{where}[{key!r}]" if len(specs) > 1 else where
    arrays[key] = to_array(value, specs[key], named, check_bools)
  return name, arrays, "instances" in request


B64_HINT = ("base64 {\"b64\": ...} values are for string inputs; this model takes pixels "
            "as numbers; POST an image file (PNG, JPEG, ...) to /api/image instead")


def _named(value, specs: dict, where: str) -> dict:
  """{input name: value}: a single input may be given bare, several by name."""
  if isinstance(value, dict):  # A tensor's value is never an object.
    if set(value) == {"b64"} and "b64" not in specs:
      raise RequestError(f"{where}: {B64_HINT}")
    if set(value) != set(specs):
      raise RequestError(f"{where} names {sorted(value)}; the signature's inputs are "
                         f"{sorted(specs)}")
    return value
  if len(specs) > 1:
    raise RequestError(f"{where} must be an object naming each of the inputs {sorted(specs)}")
  return {next(iter(specs)): value}


def _rows_to_columns(instances, specs: dict) -> dict:
  if not isinstance(instances, list):
    raise RequestError("Expecting 'instances' to be an list/array")
  if not instances:
    raise RequestError("'instances' is empty; send at least one instance")
  if len(instances) > MAX_INSTANCES:
    raise RequestError(f"{len(instances)} instances in one request; at most {MAX_INSTANCES}")
  if not all(isinstance(row, dict) for row in instances):
    if len(specs) > 1:
      raise RequestError(f"each instance must be an object naming the inputs {sorted(specs)}")
    return {next(iter(specs)): instances}
  rows = [_named(row, specs, f"instances[{i}]") for i, row in enumerate(instances)]
  return {key: [row[key] for row in rows] for key in specs}


def to_array(value, spec: tf.TensorSpec, where: str, check_bools: bool = True) -> np.ndarray:
  """A JSON value as a numpy array of `spec`'s dtype and shape.

  Raises:
    RequestError: ragged lists, a JSON type the dtype does not take (TF Serving's
      rules: integers for integer dtypes, numbers for floats), a value outside
      the dtype's range or not finite, or a shape `spec` does not accept.
  """
  dtype = spec.dtype
  if not (dtype.is_integer or dtype.is_floating):
    raise RequestError(f"{where}: this server takes numeric inputs only, not {dtype.name}")
  try:
    array = np.array(value)
  except (ValueError, TypeError):
    raise RequestError(f"{where} is not a rectangular (nested) list of numbers: "
                       "its lists at one level differ in length") from None
  if array.dtype.kind not in "iuf" or (check_bools and _first(value, bool) is not None):
    offender = _first(value, lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
    if offender is None:  # Only integers, some beyond int64.
      huge = _first(value, lambda v: not -2**63 <= v < 2**63)
      raise RequestError(f"{where}: {huge} is outside {dtype.name}'s range "
                         f"{dtype.min}..{dtype.max}")
    raise _type_error(offender, dtype, where)
  if dtype.is_integer:
    if array.dtype.kind == "f":
      raise _type_error(_first(value, lambda v: isinstance(v, float)), dtype, where)
    _check_range(array, dtype, where)
  elif not np.isfinite(array).all():
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
    raise RequestError(f"{where}{_index(index)}: {array[index]} is not a finite number")
  _check_shape(array.shape, spec, where)
  return array.astype(dtype.as_numpy_dtype)


def _first(value, predicate):
  """The first leaf of a nested list for which `predicate` holds (isinstance if a type)."""
  test = (lambda v: isinstance(v, predicate)) if isinstance(predicate, type) else predicate
  stack = [value]
  while stack:
    item = stack.pop()
    if isinstance(item, list):
      stack.extend(reversed(item))
    elif test(item):
      return item
  return None


def _type_error(offender, dtype: tf.DType, where: str) -> RequestError:
  kind = {bool: "Bool", str: "String", dict: "Object", type(None): "Null"}.get(
      type(offender), "Number")
  shown = json.dumps(offender)
  shown = shown if len(shown) <= 40 else shown[:37] + "..."
  message = (f"JSON Value: {shown} Type: {kind} is not of expected type: "
             f"{dtype.name} (in {where})")
  if isinstance(offender, dict) and "b64" in offender:
    message += f"; {B64_HINT}"
  elif dtype == tf.uint8 and isinstance(offender, float) and not isinstance(offender, bool):
    message += ("; pixels are integers 0..255 (255 = ink), so multiply [0, 1] floats by 255 "
                "and round")
  return RequestError(message)


def _check_range(array: np.ndarray, dtype: tf.DType, where: str) -> None:
  low, high = dtype.min, dtype.max
  outside = (array < low) | (array > high)
  if outside.any():
    index = tuple(int(i) for i in np.argwhere(outside)[0])
    raise RequestError(f"{where}{_index(index)}: {array[index]} is outside {dtype.name}'s "
                       f"range {low}..{high}")


def _check_shape(shape: tuple, spec: tf.TensorSpec, where: str) -> None:
  expected = spec.shape
  if expected.rank is None:
    return
  wanted = expected.as_list()
  if len(shape) == len(wanted) and all(w is None or w == s for w, s in zip(wanted, shape)):
    if not shape or shape[0] > 0:
      return
  described = "[" + ", ".join("batch" if w is None else str(w) for w in wanted) + "]"
  raise RequestError(f"{where} has shape {list(shape)}; input '{spec.name}' takes "
                     f"{described} {spec.dtype.name}" +
                     (" (each instance is one [28, 28, 1] image)" if where == "instances"
                      and wanted[1:] == [28, 28, 1] else ""))


def _index(index: tuple) -> str:
  return "".join(f"[{i}]" for i in index)


# --- Predict responses ---------------------------------------------------------------------


def predict_response(outputs: dict, row_format: bool) -> dict:
  """{"predictions": rows} or {"outputs": columns}, as TensorFlow Serving answers.

  Args:
    outputs: output name -> numpy array, all with the same batch size.
    row_format: whether the request came as "instances".
  """
  values = {key: json_values(np.asarray(array)) for key, array in sorted(outputs.items())}
  if len(values) == 1:
    only = next(iter(values.values()))
    return {"predictions": only} if row_format else {"outputs": only}
  if not row_format:
    return {"outputs": values}
  size = len(next(iter(values.values())))
  return {"predictions": [{key: column[i] for key, column in values.items()}
                          for i in range(size)]}


def json_values(array: np.ndarray):
  """Nested lists; floats as the shortest decimals that read back as the same float32."""
  if array.dtype.kind != "f":
    return array.tolist()
  shortest = [float(str(x)) if math.isfinite(x) else float(x)
              for x in array.astype(np.float32).ravel()]
  return np.array(shortest, np.float64).reshape(array.shape).tolist()
