"""Requests that arrive together share one model call.

A model call on a batch of 8 images costs far less than 8 calls on one image
(the CNN's weights are read once per call), so the server runs whatever
requests are waiting when the model becomes free as one batch. Nothing waits
for a batch to fill: a lone request runs at once, and batches form only when
requests queue up behind a running call (TensorFlow Serving's batching with
no timeout).
"""

import queue
import threading

import numpy as np
import tensorflow as tf

MAX_BATCH = 256  # images per model call; a larger request runs alone


class _Pending:
  def __init__(self, inputs: dict):
    self.inputs = inputs
    self.size = len(next(iter(inputs.values())))
    self.outputs = None
    self.error = None
    self.done = threading.Event()


class Batcher:
  """Calls `function(**inputs)` for many threads, batching what is queued.

  Args:
    function: a signature (ConcreteFunction) taking and returning tensors whose
      first dimension is the batch.
  """

  def __init__(self, function, max_batch: int = MAX_BATCH):
    self.function = function
    self.max_batch = max_batch
    self.queue = queue.SimpleQueue()
    threading.Thread(target=self._serve, name="batcher", daemon=True).start()

  def __call__(self, inputs: dict) -> dict:
    """{name: numpy [n, ...]} -> {output name: numpy [n, ...]}; raises what the call raised."""
    pending = _Pending(inputs)
    self.queue.put(pending)
    pending.done.wait()
    if pending.error is not None:
      raise pending.error
    return pending.outputs

  def _serve(self):
    while True:
      batch = [self.queue.get()]
      size = batch[0].size
      while size < self.max_batch:
        try:
          batch.append(self.queue.get_nowait())
        except queue.Empty:
          break
        size += batch[-1].size
      self._run(batch)

  def _run(self, batch: list) -> None:
    try:
      inputs = {key: np.concatenate([p.inputs[key] for p in batch])
                for key in batch[0].inputs}
      outputs = {key: value.numpy() for key, value in
                 self.function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    except tf.errors.InvalidArgumentError as e:
      if len(batch) > 1:
        # The signature refused some request's values: find whose, alone.
        for pending in batch:
          self._run([pending])
        return
      batch[0].error = e
    except Exception as e:  # pylint: disable=broad-except
      for pending in batch:
        pending.error = e
    else:
      start = 0
      for pending in batch:
        pending.outputs = {key: value[start:start + pending.size]
                           for key, value in outputs.items()}
        start += pending.size
    for pending in batch:
      pending.done.set()
