"""TensorBoard output: every dashboard's tags read back from the event files."""

import glob
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import REPO, read_events
from mnist_tf2 import config as config_lib
from mnist_tf2 import loop
from mnist_tf2 import models
from mnist_tf2 import pictures
from mnist_tf2 import summaries as summaries_lib
from mnist_tf2 import trainer as trainer_lib

GRAPH = "graph_run_metadata_graph"  # The plugin name tf.summary.trace_export writes.


def kinds(tags):
  return {tag: {kind for _, kind, _ in values} for tag, values in tags.items()}


def plugin_content(run_dir, tag):
  """The summary metadata's plugin content of `tag` (where the hparams plugin keeps its data)."""
  from tensorflow.core.util import event_pb2
  for path in glob.glob(str(run_dir / "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      for value in event_pb2.Event.FromString(record.numpy()).summary.value:
        if value.tag == tag:
          return value.metadata.plugin_data.content
  raise AssertionError(f"no {tag} in {run_dir}")


def decode_png(tensor):
  """The image of an image summary's tensor [width, height, png, ...]."""
  return np.asarray(Image.open(io.BytesIO(tensor[2])))


def test_every_dashboard_is_written(tmp_path):
  # A few tiny steps of the MLP: from its random start it misclassifies test examples.
  config = config_lib.resolve("mlp", "smoke", {
      "workdir": str(tmp_path), "max_steps": 5, "steps_per_loop": 5, "log_every": 5,
      "checkpoint_every": 5, "learning_rate": 1e-6, "histogram_every": 2,
      "profile_steps": "1,3"})
  results = loop.train_and_evaluate(config)

  root, train = read_events(tmp_path), read_events(tmp_path / "train")
  test = read_events(tmp_path / "eval" / "test")
  assert kinds(root) == {"config": {"text"}, "command_line": {"text"}}
  hparams = read_events(tmp_path / "hparams")
  final_metrics = {f"{split}/{name}" for split in ("train", "validation", "test")
                   for name in ("loss", "accuracy")}
  assert kinds(hparams) == {"_hparams_/experiment": {"hparams"},
                            "_hparams_/session_start_info": {"hparams"},
                            **{tag: {"scalars"} for tag in final_metrics}}
  assert hparams["test/accuracy"][0][2] == pytest.approx(results["metrics"]["test"]["accuracy"])
  assert kinds(train) == {
      **{tag: {"scalars"} for tag in ("loss", "accuracy", "gradient_norm", "learning_rate",
                                      "examples_per_sec")},
      "inputs": {"images"}, "train_loop": {GRAPH},
      **{f"weights/{layer}/{weight}": {"histograms"}
         for layer in ("hidden1", "hidden2", "softmax_linear") for weight in ("kernel", "bias")},
      **{f"activations/{layer}": {"histograms"}
         for layer in ("hidden1", "hidden2", "softmax_linear")}}
  assert kinds(test) == {"loss": {"scalars"}, "accuracy": {"scalars"},
                         "confusion_matrix": {"images"}, "misclassified": {"images"}}
  for split in ("train", "validation"):
    assert kinds(read_events(tmp_path / "eval" / split)) == {"loss": {"scalars"},
                                                             "accuracy": {"scalars"}}

  # Histograms at step 0, every --histogram_every steps (the loop stops there), and the end.
  assert [step for step, _, _ in train["weights/hidden1/kernel"]] == [0, 2, 4, 5]
  [(_, _, norm)] = train["gradient_norm"]
  assert np.isfinite(norm) and norm > 0
  # The profiler trace of --profile_steps.
  assert glob.glob(str(tmp_path / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))

  # The pictures decode, and the misclassified examples are the model's mistakes.
  assert decode_png(train["inputs"][0][2]).shape == (242, 242, 3)  # 8x8 tiles of 28 + borders.
  [(_, _, misclassified)] = test["misclassified"]
  assert decode_png(misclassified).shape[2] == 3
  assert results["metrics"]["test"]["num_correct"] < results["metrics"]["test"]["num_examples"]

  # The hparams session holds the resolved config.
  session = plugin_data_pb2.HParamsPluginData.FromString(
      plugin_content(tmp_path / "hparams", "_hparams_/session_start_info")).session_start_info
  assert session.hparams["model"].string_value == "mlp"
  assert session.hparams["histogram_every"].number_value == 2
  experiment = plugin_data_pb2.HParamsPluginData.FromString(
      plugin_content(tmp_path / "hparams", "_hparams_/experiment")).experiment
  assert {m.name.tag for m in experiment.metric_infos} == final_metrics
  [(_, _, text)] = root["config"]
  assert json.loads(text.item().decode().strip("`\n")) == config.to_dict()


def test_softmax_shows_its_class_weights(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path)})
  loop.train_and_evaluate(config)
  train = read_events(tmp_path / "train")
  assert kinds(train)["class_weights"] == {"images"}
  assert [step for step, _, _ in train["class_weights"]] == [0, config.max_steps]
  [(_, _, picture)] = train["class_weights"][-1:]
  assert decode_png(picture).shape == (2 * (28 * 3 + pictures.CAPTION_HEIGHT) + 3 * 2,
                                       5 * 28 * 3 + 6 * 2, 3)


def test_no_test_pictures_when_the_test_split_is_not_evaluated(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                   "eval_splits": "validation"})
  loop.train_and_evaluate(config)
  assert not (tmp_path / "eval" / "test").exists()
  assert set(read_events(tmp_path / "hparams")) >= {"validation/accuracy", "validation/loss"}


def test_summaries_off_writes_nothing(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                   "summaries": False})
  loop.train_and_evaluate(config)
  assert not glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
  assert (tmp_path / "results.json").exists()


def test_gradient_norm_is_the_norm_of_the_last_steps_gradient():
  # Plain SGD: the weights and the step are the optimizer's whole state.
  config = config_lib.resolve("mlp", "smoke", {"optimizer": "sgd", "learning_rate": 5.0})
  model, optimizer = trainer_lib.build_model_and_optimizer(config)
  trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(), model, optimizer)
  images = tf.random.stateless_uniform([config.batch_size, 28, 28, 1], seed=[1, 2])
  labels = tf.random.stateless_uniform([config.batch_size], seed=[3, 4], maxval=10,
                                       dtype=tf.int32)
  batches = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
  initial = model.get_weights()

  def norm_now():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(trainer_lib.cross_entropy(labels, model(images)))
    return tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables))

  first = norm_now()
  trainer.train(batches, tf.constant(2, tf.int64))
  third = norm_now()
  model.set_weights(initial)
  optimizer.iterations.assign(0)
  out = trainer.train(batches, tf.constant(3, tf.int64))
  np.testing.assert_allclose(out["gradient_norm"], third, rtol=1e-5)
  assert abs(float(first) - float(third)) > 0.1 * float(first)  # The steps differ.


@pytest.mark.parametrize("model_name", ["softmax", "mlp", "cnn"])
def test_activations_chain_reproduces_the_model(model_name):
  model = models.create_model(config_lib.resolve(model_name, "smoke"))
  images = tf.random.stateless_uniform([4, 28, 28, 1], seed=[5, 6])
  activations = summaries_lib.layer_activations(model, images)
  assert list(activations)[-1] == model.layers[-1].name
  np.testing.assert_allclose(list(activations.values())[-1], model(images), rtol=1e-5,
                             atol=1e-6)


def test_class_weights_are_blue_for_and_red_against():
  kernel = np.zeros((784, 10), np.float32)
  kernel[0, 3] = 2.0    # Top-left pixel of class 3: evidence for.
  kernel[0, 4] = -1.0   # ... of class 4: against, half as strong.
  [picture] = pictures.class_weights_image(kernel, scale=1)
  border, tile = 2, 28 + pictures.CAPTION_HEIGHT
  top_left = lambda index: picture[border + (index // 5) * (tile + border),
                                   border + (index % 5) * (28 + border)]
  assert tuple(top_left(3)) == (0, 0, 255)
  assert tuple(top_left(4)) == (255, 128, 128)
  assert tuple(top_left(0)) == (255, 255, 255)


def test_confusion_matrix_image_shades_by_row_share():
  matrix = np.zeros((10, 10), np.int64)
  matrix[2, 2], matrix[2, 7] = 3, 1
  [picture] = pictures.confusion_matrix_image(matrix, cell=30)
  cell_corner = lambda i, j: tuple(picture[40 + i * 30 + 1, 40 + j * 30 + 1])
  assert cell_corner(2, 2)[2] == 255 and cell_corner(2, 2)[0] < 100   # Mostly right: blue.
  assert cell_corner(2, 7)[0] == 255 and cell_corner(2, 7)[1] < 255   # Mistakes: red.
  assert cell_corner(5, 5) == (255, 255, 255)                          # Empty row: white.


def test_a_real_tensorboard_serves_every_tag():
  """scripts/check_tensorboard.py --fast: 20 real steps, a real server on a loopback port."""
  result = subprocess.run([sys.executable, "scripts/check_tensorboard.py", "--fast"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.rstrip().endswith("all tags served")
  assert "MISSING" not in result.stdout
  for dashboard in ("scalars", "images", "histograms", "hparams", "graphs", "text", "profile"):
    assert f"ok      {dashboard}" in result.stdout, dashboard


def test_histograms_of_large_tensors_are_strided_samples():
  """A histogram one-hot encodes its input: big tensors are sampled first."""
  from mnist_tf2 import summaries as summaries_lib
  limit = summaries_lib.MAX_HISTOGRAM_VALUES
  dense_kernel = tf.reshape(tf.range(3136 * 1024, dtype=tf.float32), [3136, 1024])
  sample = summaries_lib.histogram_sample(dense_kernel).numpy()
  assert limit // 2 < sample.size <= limit
  # Evenly spread over the whole tensor, not its first rows.
  size = 3136 * 1024
  stride = -(-size // limit)
  assert sample[0] == 0 and sample[-1] >= size - stride
  small = tf.ones([10, 3])
  assert summaries_lib.histogram_sample(small).shape == (30,)
