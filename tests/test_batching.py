"""The batcher that lets concurrent requests share one model call."""

import concurrent.futures
import threading

import numpy as np
import pytest
import tensorflow as tf

from mnist_tf2 import batching


class _Model:
  """doubled = 2 x; refuses negative values as a signature's own check would."""

  def __init__(self, gate=None):
    self.batch_sizes = []
    self.gate = gate

  def __call__(self, x):
    if self.gate is not None:
      self.gate.wait(10)
    self.batch_sizes.append(int(x.shape[0]))
    if np.any(x.numpy() < 0):
      raise tf.errors.InvalidArgumentError(None, None, "x must not be negative")
    return {"doubled": x * 2, "total": tf.reduce_sum(x, axis=1)}


def test_queued_requests_share_a_call_and_get_their_own_rows():
  gate = threading.Event()
  model = _Model(gate)
  batcher = batching.Batcher(model)
  inputs = [np.full((1 + i % 3, 2), i, np.float32) for i in range(12)]
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    futures = [pool.submit(batcher, {"x": x}) for x in inputs]
    gate.set()  # the first call was held until all twelve were queued
    results = [f.result(timeout=20) for f in futures]
  for x, result in zip(inputs, results):
    np.testing.assert_array_equal(result["doubled"], 2 * x)
    np.testing.assert_array_equal(result["total"], x.sum(1))
  assert sum(model.batch_sizes) == sum(len(x) for x in inputs)
  assert len(model.batch_sizes) < len(inputs)  # some calls served several requests


def test_a_refused_request_fails_alone():
  gate = threading.Event()
  model = _Model(gate)
  batcher = batching.Batcher(model)
  inputs = [np.ones((1, 2), np.float32), -np.ones((1, 2), np.float32), np.ones((2, 2), np.float32)]
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = [pool.submit(batcher, {"x": x}) for x in inputs]
    gate.set()
    good, bad, other = futures
    np.testing.assert_array_equal(good.result(20)["doubled"], 2 * inputs[0])
    np.testing.assert_array_equal(other.result(20)["doubled"], 2 * inputs[2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must not be negative"):
      bad.result(20)
