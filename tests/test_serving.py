"""Using a trained model: export (SavedModel), evaluate, predict on image files.

One softmax regression is trained briefly on the bundled MNIST for the whole
module (300 steps, ~90% test accuracy) and exported at the end of training.
"""

import json
import os
import re
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_module
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import evaluate
from mnist_tf2 import export
from mnist_tf2 import loop
from mnist_tf2 import predict
from mnist_tf2 import preprocess
from mnist_tf2 import restore
from mnist_tf2.errors import UserError
from mnist_tf2.metrics import format_eval

NUM_IMAGES = 50  # per variant of the image-file test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  base = tmp_path_factory.mktemp("trained")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
    config = config_lib.resolve("softmax", "seed", {
        "max_steps": 300, "workdir": str(base / "workdir"),
        "export_dir": str(base / "export")})
    results = loop.train_and_evaluate(config)
    splits = datasets.load_splits(config)
  return types.SimpleNamespace(workdir=config.workdir, export_dir=config.export_dir,
                               results=results, test=splits.test)


def _serving_default(export_dir):
  loaded = tf.saved_model.load(export_dir)
  return loaded, loaded.signatures["serving_default"]


# --- export ---------------------------------------------------------------------------------


def test_saved_model_matches_the_checkpointed_model(trained):
  restored = restore.restore_model(trained.workdir)
  assert restored.step == 300 and restored.checkpoint.endswith("ckpt-300")
  images = trained.test.images[:64]
  expected = tf.nn.softmax(restored.model(datasets.normalize(images), training=False)).numpy()

  loaded = tf.saved_model.load(trained.export_dir)
  assert set(loaded.signatures) == {"serving_default", "serving_uint8"}
  for key, dtype, pixels in (("serving_default", tf.float32, images / np.float32(255)),
                             ("serving_uint8", tf.uint8, images)):
    serve = loaded.signatures[key]
    inputs = serve.structured_input_signature[1]
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == dtype
    assert inputs["images"].shape.as_list() == [None, 28, 28, 1]
    outputs = serve(images=tf.constant(pixels))
    assert set(outputs) == {"probabilities", "classes"}
    assert outputs["probabilities"].dtype == tf.float32 and outputs["classes"].dtype == tf.int64
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(-1))
    # Trained, not a fresh model: the test accuracy is the one training reported.
    accuracy = float(np.mean(outputs["classes"].numpy() == trained.test.labels[:64]))
    assert accuracy > 0.8
  del loaded


@pytest.mark.parametrize("pixels, refused", [
    ("float [0, 1]", False),
    ("uint8 0-255", True),  # Cast to float by the client: 255 > 1.
    ("float 0-255", True),
    ("float NaN", True),
    ("float -0.5", True),
])
def test_serving_default_refuses_pixels_out_of_contract(trained, pixels, refused):
  """As saved_model_cli run and TF Serving call it: a TF1 session fed numpy arrays.

  The feed converts an array to the input's dtype: with the earlier uint8
  input, float32 pixels in [0, 1] became all zeros and every answer was "5".
  """
  images = trained.test.images[:8]
  array = {"float [0, 1]": images / np.float32(255), "uint8 0-255": images,
           "float 0-255": images.astype(np.float32),
           "float NaN": np.where(images > 0, np.nan, 0).astype(np.float32),
           "float -0.5": images / np.float32(255) - 0.5}[pixels]
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], trained.export_dir)
    signature = meta.signature_def["serving_default"]
    fetch = signature.outputs["classes"].name
    feed = {signature.inputs["images"].name: array}
    if refused:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=r"images must be float32 pixels in \[0, 1\]"):
        session.run(fetch, feed)
    else:
      assert (session.run(fetch, feed) == trained.test.labels[:8]).mean() >= 0.75


def test_saved_model_loads_where_the_package_cannot_be_imported(trained, tmp_path):
  images = trained.test.images[:8] / np.float32(255)
  np.save(tmp_path / "images.npy", images)
  _, serve = _serving_default(trained.export_dir)
  np.save(tmp_path / "expected.npy", serve(images=tf.constant(images))["probabilities"].numpy())
  script = f"""
import sys
sys.path = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
sys.modules["mnist_tf2"] = None  # any import of the package now fails
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load({trained.export_dir!r})
out = loaded.signatures["serving_default"](images=tf.constant(np.load("images.npy")))
np.testing.assert_allclose(out["probabilities"].numpy(), np.load("expected.npy"), atol=1e-5)
assert not [m for m in sys.modules if m.startswith("mnist_tf2.")]
print("loaded", out["classes"].numpy().tolist())
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("loaded [")


def test_saved_model_cli_show_and_run(trained, tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  common = ["--dir", trained.export_dir, "--tag_set", "serve",
            "--signature_def", "serving_default"]
  show = subprocess.run([cli, "show", *common], capture_output=True, text=True, timeout=120)
  assert show.returncode == 0, show.stderr[-2000:]
  assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 28, 28, 1\)",
                   show.stdout), show.stdout
  assert re.search(r"outputs\['classes'\] tensor_info:\s+dtype: DT_INT64\s+shape: \(-1\)",
                   show.stdout), show.stdout
  assert re.search(r"outputs\['probabilities'\] tensor_info:\s+dtype: DT_FLOAT\s+"
                   r"shape: \(-1, 10\)", show.stdout), show.stdout

  # `run` loads through the TF1 session loader, as TensorFlow Serving does. The
  # README's call: float32 pixels in [0, 1].
  images = trained.test.images[:5] / np.float32(255)
  np.save(tmp_path / "images.npy", images)
  run = subprocess.run([cli, "run", *common, "--inputs", f"images={tmp_path / 'images.npy'}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  classes = re.search(r"Result for output key classes:\n\[([\d ]+)\]", run.stdout).group(1)
  _, serve = _serving_default(trained.export_dir)
  assert [int(c) for c in classes.split()] == serve(images=images)["classes"].numpy().tolist()


def test_export_command_refuses_to_overwrite_without_flag(trained, tmp_path):
  target = tmp_path / "exported"
  first = run_module("mnist_tf2.export", f"--workdir={trained.workdir}",
                     f"--export_dir={target}", timeout=120)
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout.endswith(
      f"ckpt-300 (step 300) to {target} (signatures serving_default: float32 pixels in "
      "[0, 1]; serving_uint8: uint8 0-255)\n"), first.stdout
  saved = (target / "saved_model.pb").read_bytes()

  again = run_module("mnist_tf2.export", f"--workdir={trained.workdir}",
                     f"--export_dir={target}", timeout=120)
  assert again.returncode == 2
  errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: --export_dir={target} is not empty; pass --overwrite to replace "
                    "the SavedModel there, or choose a new directory"]
  assert "Traceback" not in again.stderr
  assert (target / "saved_model.pb").read_bytes() == saved


def test_overwrite_swaps_in_a_new_export_and_leaves_nothing_behind(trained, tmp_path):
  target = tmp_path / "exported"
  export.export_workdir(trained.workdir, str(target))
  (target / "marker").write_text("from the earlier export")
  export.export_workdir(trained.workdir, str(target), overwrite=True)
  assert not (target / "marker").exists()
  assert export.is_saved_model(str(target))
  assert sorted(os.listdir(tmp_path)) == ["exported"]  # no staging or retired copies


def test_an_export_is_readable_by_others_as_the_umask_allows(trained, tmp_path):
  # TF Serving often runs as another user: the export must not stay private (mkdtemp's 0700).
  previous = os.umask(0o022)
  try:
    export.export_workdir(trained.workdir, str(tmp_path / "shared"))
  finally:
    os.umask(previous)
  assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755


def test_overwrite_never_replaces_what_is_not_a_saved_model(trained, tmp_path):
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "thesis.tex").write_text("years of work")
  with pytest.raises(UserError, match="holds no SavedModel; refusing to replace it, even "
                     "with --overwrite"):
    export.export_workdir(trained.workdir, str(precious), overwrite=True)
  assert os.listdir(precious) == ["thesis.tex"]
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(UserError, match="exists and is not a directory"):
    export.export_workdir(trained.workdir, str(a_file), overwrite=True)
  assert a_file.read_text() == "x"


def test_export_into_an_existing_empty_directory(trained, tmp_path):
  (tmp_path / "empty").mkdir()
  export.export_workdir(trained.workdir, str(tmp_path / "empty"))
  assert export.is_saved_model(str(tmp_path / "empty"))


def _workdir_with(tmp_path, config_text=None, checkpoint_from=None):
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  if config_text is not None:
    (workdir / "config.json").write_text(config_text)
  if checkpoint_from is not None:
    os.symlink(os.path.join(checkpoint_from, "checkpoints"), workdir / "checkpoints")
  return str(workdir)


def _foreign_checkpoint(workdir):
  """A checkpoint that holds no model at all (nothing to mismatch in shape)."""
  checkpoint = tf.train.Checkpoint(something_else=tf.Variable(1.0))
  tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "checkpoints"), 2).save()
  return workdir


@pytest.mark.parametrize("case, message", [
    ("missing", r"--workdir=.*/nowhere is not a directory"),
    ("no_config", r"config.json does not exist; is --workdir=.* a training workdir\?"),
    ("bad_json", r"cannot read .*config.json: Expecting property name"),
    ("not_a_config", r"config.json is not a training config \(no 'model' field\)"),
    ("bad_value", r"config.json: --model='perceptron' is not one of: softmax, mlp, cnn"),
    ("no_checkpoint", r"no checkpoint in .*/checkpoints; train first"),
    ("other_model", r"cannot restore the mlp model from .*ckpt-300: "),
    ("foreign_checkpoint", r"cannot restore the softmax model from .*ckpt-1: "),
])
def test_restore_errors_are_one_line(trained, tmp_path, case, message, caplog):
  softmax_config = json.dumps({"model": "softmax"})
  workdir = {
      "missing": lambda: str(tmp_path / "nowhere"),
      "no_config": lambda: _workdir_with(tmp_path),
      "bad_json": lambda: _workdir_with(tmp_path, "{not json"),
      "not_a_config": lambda: _workdir_with(tmp_path, "[1, 2]"),
      "bad_value": lambda: _workdir_with(tmp_path, json.dumps({"model": "perceptron"})),
      "no_checkpoint": lambda: _workdir_with(tmp_path, softmax_config),
      "other_model": lambda: _workdir_with(tmp_path, json.dumps({"model": "mlp"}),
                                           checkpoint_from=trained.workdir),
      "foreign_checkpoint": lambda: _foreign_checkpoint(_workdir_with(tmp_path, softmax_config)),
  }[case]()
  with pytest.raises(UserError, match=message) as error:
    export.export_workdir(workdir, str(tmp_path / "export"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "export").exists()
  # Nor does TensorFlow add warnings about the half-read checkpoint after it.
  assert not [r for r in caplog.records if "checkpoint" in r.getMessage()]


def test_train_refuses_a_non_empty_export_dir_before_training(tmp_path):
  (tmp_path / "export").mkdir()
  (tmp_path / "export" / "keep.txt").write_text("mine")
  config = config_lib.resolve("softmax", "smoke", {
      "workdir": str(tmp_path / "workdir"), "export_dir": str(tmp_path / "export")})
  with pytest.raises(UserError, match="is not empty; pass --overwrite"):
    loop.train_and_evaluate(config)
  assert not (tmp_path / "workdir" / "checkpoints").exists()
  assert os.listdir(tmp_path / "export") == ["keep.txt"]


# --- evaluate -------------------------------------------------------------------------------


def test_evaluate_command_reproduces_the_training_evaluation(trained):
  result = run_module("mnist_tf2.evaluate", f"--workdir={trained.workdir}",
                      "--splits=test,validation", timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == ""  # No TensorFlow start-up lines.
  out = result.stdout
  assert "Training Data Eval:" not in out
  for split, title in (("test", "Test"), ("validation", "Validation")):
    metrics = trained.results["metrics"][split]
    assert format_eval(split, metrics) in out
    block = out.split(f"{title} Data Eval:")[1]
    rows = re.findall(r"^ +(\d) ((?: +\d+){10})$", block, re.M)[:10]
    assert [int(label) for label, _ in rows] == list(range(10))
    matrix = np.array([[int(n) for n in counts.split()] for _, counts in rows])
    assert matrix.sum() == metrics["num_examples"]
    assert np.trace(matrix) == metrics["num_correct"]
  assert out.index("Test Data Eval:") < out.index("Validation Data Eval:")


def test_confusion_matrix_counts_label_prediction_pairs(trained):
  restored = restore.restore_model(trained.workdir)
  split = datasets.Split(trained.test.images[:300], trained.test.labels[:300])
  matrix = evaluate.Evaluator(restored.model)(
      datasets.eval_dataset(split, batch_size=128)).confusion_matrix
  predictions = restored.model(datasets.normalize(split.images)).numpy().argmax(-1)
  expected = np.zeros((10, 10), np.int64)
  np.add.at(expected, (split.labels, predictions), 1)
  np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize("text, expected", [
    ("test", ["test"]), ("test, train,test", ["test", "train"]),
    ("train,validation,test", ["train", "validation", "test"])])
def test_parse_splits(text, expected):
  assert evaluate.parse_splits(text) == expected


@pytest.mark.parametrize("text", ["", " , ", "test,dev"])
def test_parse_splits_refuses(text):
  with pytest.raises(UserError, match="split"):
    evaluate.parse_splits(text)


# --- predict: files -------------------------------------------------------------------------


def _variants(test, tmp_path):
  """The first NUM_IMAGES test digits written as files in four ways."""
  variants = {}
  for name, make, ext in (
      ("as_is", lambda im: Image.fromarray(im), "png"),
      ("inverted", lambda im: Image.fromarray(255 - im).convert("RGB"), "jpg"),
      ("resized_100", lambda im: Image.fromarray(im).resize(
          (100, 100), Image.Resampling.BICUBIC), "bmp"),
      ("inverted_resized_gif", lambda im: Image.fromarray(255 - im).resize(
          (100, 100), Image.Resampling.BICUBIC), "gif"),
  ):
    paths = []
    for i, image in enumerate(test.images[:NUM_IMAGES, ..., 0]):
      path = tmp_path / f"{name}_{i}.{ext}"
      make(image).save(path)
      paths.append(str(path))
    variants[name] = paths
  return variants


def test_image_files_are_read_as_their_labels(trained, tmp_path):
  classifier = predict.Classifier(trained.export_dir)
  labels = trained.test.labels[:NUM_IMAGES].tolist()
  # The model on the raw test images, for reference: the files should do as well.
  direct = classifier.probabilities(trained.test.images[:NUM_IMAGES]).argmax(-1)
  direct_accuracy = float(np.mean(direct == labels))
  for name, paths in _variants(trained.test, tmp_path).items():
    records = predict.predict_files(classifier, paths, top_k=3)
    assert all("error" not in r for r in records), records
    predicted = [r["top_k"][0][0] for r in records]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy >= 0.8 and accuracy >= direct_accuracy - 0.1, (name, accuracy)
    probabilities = [p for r in records for _, p in r["top_k"]]
    assert all(0 <= p <= 1 for p in probabilities)
    assert all(r["top_k"][0][1] >= r["top_k"][1][1] >= r["top_k"][2][1] for r in records)


def _png_header_only(path, width, height):
  """A PNG whose header claims width x height (decoding would fail; it must not start)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b""))


def test_predict_command_answers_good_files_and_one_line_per_bad_one(trained, tmp_path):
  good = _variants(types.SimpleNamespace(images=trained.test.images[:2]), tmp_path)["as_is"]
  bad = {
      "missing.png": None,
      "empty.png": lambda p: p.write_bytes(b""),
      "text.png": lambda p: p.write_text("not an image at all"),
      "huge_pixels.png": lambda p: _png_header_only(p, 8000, 8000),
      "huge_file.png": lambda p: os.truncate(p, preprocess.MAX_FILE_BYTES + 1),
      "truncated.png": lambda p: p.write_bytes(open(good[0], "rb").read()[:60]),
      "blank.png": lambda p: Image.new("L", (40, 40), 255).save(p),
      "a_directory.png": lambda p: p.mkdir(),
  }
  for name, make in bad.items():
    if name == "huge_file.png":
      (tmp_path / name).touch()
    if make:
      make(tmp_path / name)
  bad_paths = [str(tmp_path / name) for name in bad]
  files = [good[0], *bad_paths, good[1]]
  result = run_module("mnist_tf2.predict", f"--export_dir={trained.export_dir}", *files,
                      "--top_k=1", timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr

  lines = result.stdout.splitlines()
  assert [line.split(": ")[0] for line in lines] == [good[0], good[1]]
  for line, label in zip(lines, trained.test.labels[:2]):
    match = re.fullmatch(r".*: (\d) \(p=(\d\.\d{3})\)", line)
    assert match, line
    assert int(match.group(1)) == label

  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == len(bad_paths)
  assert errors == result.stderr.splitlines()  # No TensorFlow start-up lines.
  expected = {
      "missing.png": "no such file",
      "empty.png": "the file is empty",
      "text.png": "not a PNG, JPEG, BMP, GIF, TIFF or WEBP image",
      "huge_pixels.png": "8000x8000 pixels is more than the 50,000,000 pixel limit",
      "huge_file.png": "the file is 50 MiB, more than the 50 MiB limit",
      "truncated.png": "cannot decode the image: ",
      "blank.png": "no digit found: the image is blank or has no contrast",
      "a_directory.png": "not a regular file",
  }
  for line, path in zip(errors, bad_paths):
    assert line.startswith(f"error: {path}: {expected[os.path.basename(path)]}"), line


def test_report_as_json_and_text(trained, tmp_path, capsys):
  good = _variants(types.SimpleNamespace(images=trained.test.images[:1]), tmp_path)["inverted"]
  missing = str(tmp_path / "missing.png")
  records = predict.predict_files(predict.Classifier(trained.export_dir), [good[0], missing],
                                  top_k=3)
  assert predict.report(records, as_json=True)
  out, err = capsys.readouterr()
  answer, failure = [json.loads(line) for line in out.splitlines()]
  assert answer["file"] == good[0] and answer["class"] == trained.test.labels[0]
  assert [g["class"] for g in answer["top_k"]][0] == answer["class"]
  assert len(answer["top_k"]) == 3 and answer["top_k"][0]["probability"] == answer["probability"]
  assert all(g["probability"] == round(g["probability"], 4) for g in answer["top_k"])
  assert failure == {"file": missing, "error": "no such file"}
  assert err == f"error: {missing}: no such file\n"

  assert not predict.report(records[:1])
  out, _ = capsys.readouterr()
  assert re.fullmatch(rf"{re.escape(good[0])}: {answer['class']} \(p=\d\.\d{{3}}\), "
                      r"\d \(p=\d\.\d{3}\), \d \(p=\d\.\d{3}\)\n", out), out


def test_json_probabilities_have_four_decimals():
  record = {"file": "seven.png", "top_k": [(7, np.float32(0.9673320651054382)),
                                           (1, 0.03266793489456177)]}
  line = predict.json_record(record)
  assert json.loads(line) == {"file": "seven.png", "class": 7, "probability": 0.9673,
                              "top_k": [{"class": 7, "probability": 0.9673},
                                        {"class": 1, "probability": 0.0327}]}
  assert "0.96733" not in line


def test_predict_refuses_what_is_not_a_saved_model(tmp_path):
  with pytest.raises(UserError, match="holds no SavedModel"):
    predict.Classifier(str(tmp_path))


def test_a_failing_save_is_one_line_and_leaves_no_staging_dir(tmp_path, monkeypatch):
  """tf.saved_model.save reports a full disk as an OpError, not an OSError."""
  from mnist_tf2 import config as config_lib
  from mnist_tf2 import export
  from mnist_tf2 import models
  from mnist_tf2.errors import UserError
  config = config_lib.resolve("softmax", "smoke")

  def full_disk(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device\nmore")

  monkeypatch.setattr(tf.saved_model, "save", full_disk)
  with pytest.raises(UserError, match="cannot write the SavedModel to .*: No space left on "
                     "device$"):
    export.export_model(models.create_model(config), config, str(tmp_path / "export"))
  assert os.listdir(tmp_path) == []


def test_export_falls_back_past_an_unreadable_newest_checkpoint(tmp_path, capsys):
  """The commands restore as training does: a damaged newest checkpoint is skipped."""
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path / "workdir")})
  loop.train_and_evaluate(config)
  newest = os.path.join(config.workdir, "checkpoints", "ckpt-20")
  data = f"{newest}.data-00000-of-00001"
  os.truncate(data, os.path.getsize(data) // 2)
  capsys.readouterr()
  restored = export.export_workdir(config.workdir, str(tmp_path / "export"))
  assert restored.step == 10 and restored.checkpoint.endswith("ckpt-10")
  assert re.search(r"ckpt-20 is unreadable .*; falling back to ckpt-10", capsys.readouterr().out)
  assert export.is_saved_model(str(tmp_path / "export"))


# --- predict: photos and scans --------------------------------------------------------------


def _confident_digits(classifier, test, count=10):
  """Indices of `count` test digits, one per class in turn, the model reads right with p > 0.95."""
  probabilities = classifier.probabilities(test.images)
  chosen = []
  for label in range(count):
    right = np.flatnonzero((test.labels == label % 10) & (probabilities.argmax(-1) == test.labels)
                           & (probabilities.max(-1) > 0.95))
    chosen.append(int(right[label // 10]))
  return chosen


def test_photo_conditions_are_read_as_the_clean_digit(trained, tmp_path):
  """One file per condition of scripts/predict_eval.py, made here, each read right."""
  from test_preprocess import load_predict_eval
  predict_eval = load_predict_eval()
  classifier = predict.Classifier(trained.export_dir)
  chosen = _confident_digits(classifier, trained.test, len(predict_eval.CONDITIONS))
  paths, labels = [], []
  for i, (condition, render) in enumerate(predict_eval.CONDITIONS.items()):
    paths.append(tmp_path / condition)
    paths[-1].write_bytes(render(trained.test.images[chosen[i], ..., 0],
                                 np.random.default_rng(i)))
    labels.append(int(trained.test.labels[chosen[i]]))
  records = predict.predict_files(classifier, [str(p) for p in paths])
  read = {r["file"].rsplit("/", 1)[1]: r["top_k"][0][0] if "top_k" in r else r["error"]
          for r in records}
  wrong = {name: (answer, label) for (name, answer), label in zip(read.items(), labels)
           if answer != label}
  assert not wrong, wrong


def _page_with(digit, page, top_left, digit_px, light=None, noise=0.0, rng=None):
  """A dark digit (its 20-pixel box `digit_px` wide) on a grey page (230 where lit)."""
  size = round(28 * digit_px / 20)
  ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC),
                   np.float32) / 255.0
  reflectance = np.full(page, 0.9, np.float32)
  y, x = top_left
  reflectance[y:y + size, x:x + size] = 0.9 - 0.8 * np.clip(ink, 0, 1)
  image = 255.0 * reflectance * (1.0 if light is None else light)
  if noise:
    image = image + rng.normal(0, noise, page)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_uneven_light_and_noise_and_a_stray_speck(trained, tmp_path):
  """The issue's inputs: each read as the model reads the clean digit."""
  classifier = predict.Classifier(trained.export_dir)
  chosen = _confident_digits(classifier, trained.test)
  rng = np.random.default_rng(0)
  gradient = np.linspace(230 / 230, 180 / 230, 600, dtype=np.float32)[np.newaxis, :]
  paths = []
  for n, i in enumerate(chosen):
    digit = trained.test.images[i, ..., 0]
    lit = _page_with(digit, (600, 600), (150, 170), 200, light=gradient, noise=4.0, rng=rng)
    paths.append(tmp_path / f"light_{n}.jpg")
    Image.fromarray(lit).save(paths[-1], quality=90)
    speck = _page_with(digit, (400, 400), (40, 40), 200)
    speck[380:383, 385:388] = 0  # one 3x3 black dot, far from the digit
    paths.append(tmp_path / f"speck_{n}.png")
    Image.fromarray(speck).save(paths[-1])
  records = predict.predict_files(classifier, [str(p) for p in paths])
  expected = np.repeat(trained.test.labels[chosen], 2)
  assert [r["top_k"][0][0] for r in records] == expected.tolist()
  for record in records[1::2]:  # the speck is left out of the digit's box
    assert record["found"]["box"][2] < 330 and record["found"]["ignored_marks"] == 1


def test_predict_json_gives_the_box_and_save_inputs_writes_what_the_model_saw(trained,
                                                                              tmp_path):
  digit = trained.test.images[0, ..., 0]
  (tmp_path / "sub").mkdir()
  first, second = tmp_path / "page.jpg", tmp_path / "sub" / "page.png"
  Image.fromarray(_page_with(digit, (300, 400), (50, 180), 120)).save(first, quality=90)
  Image.fromarray(_page_with(digit, (200, 200), (10, 10), 100)).save(second)
  seen = tmp_path / "seen"
  result = run_module("mnist_tf2.predict", f"--export_dir={trained.export_dir}", "--json",
                      f"--save_inputs={seen}", str(first), str(second), timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  answers = [json.loads(line) for line in result.stdout.splitlines()]
  assert [a["input_png"] for a in answers] == [str(seen / "page.mnist.png"),
                                               str(seen / "page-2.mnist.png")]
  assert answers[0]["image_size"] == [400, 300] and answers[1]["image_size"] == [200, 200]
  left, top, right, bottom = answers[0]["box"]
  # The digit's 20-pixel box is 120 pixels wide from (180, 50); its ink lies within.
  assert 180 <= left < right <= 180 + 168 and 50 <= top < bottom <= 50 + 168
  assert right - left > 30 and bottom - top > 80
  for answer, path in zip(answers, (first, second)):
    expected, _ = preprocess.prepare(str(path))
    np.testing.assert_array_equal(np.asarray(Image.open(answer["input_png"])), expected[..., 0])
    assert answer["class"] == trained.test.labels[0]


def test_save_input_never_writes_over_an_input_or_an_earlier_picture(tmp_path):
  image = np.zeros((28, 28, 1), np.uint8)
  image[10:18, 12:16] = 255
  inputs = [tmp_path / "a.mnist.png", tmp_path / "other" / "a.mnist.png"]
  inputs[0].write_bytes(b"the user's own file")
  taken = {os.path.abspath(p) for p in inputs}
  # a.mnist.png -> stem "a.mnist" -> a.mnist.mnist.png; then the same name again -> -2.
  written = [predict.save_input(image, str(p), str(tmp_path), taken) for p in inputs]
  assert written == [str(tmp_path / "a.mnist.mnist.png"), str(tmp_path / "a.mnist-2.mnist.png")]
  inputs.append(tmp_path / "b.png")
  taken.add(str(tmp_path / "b.mnist.png"))  # as if b.mnist.png were an input too
  assert predict.save_input(image, str(inputs[2]), str(tmp_path), taken) == str(
      tmp_path / "b-2.mnist.png")
  assert inputs[0].read_bytes() == b"the user's own file"
  np.testing.assert_array_equal(np.asarray(Image.open(written[0]))[..., np.newaxis], image)
  with pytest.raises(UserError, match="^cannot write .*nowhere"):
    predict.save_input(image, "c.png", str(tmp_path / "nowhere"), set())
