"""The benchmark's PyTorch peer: our three models trained the way PyTorch's MNIST example does.

PyTorch's own example (github.com/pytorch/examples, mnist/main.py) in outline:
an `nn.Module` with `forward`, `F.cross_entropy`, `zero_grad / backward / step`
in a Python loop. Done well for a CPU, as a PyTorch user would: data held in
memory as tensors (no DataLoader workers on 2 cores), channels-last
convolutions, the fused CPU Adam, `torch.compile` and bfloat16 autocast as
options. The layers, their initialisation, the Adam hyperparameters
(epsilon 1e-7, as Keras) and the learning-rate schedule are ours
(mnist_tf2/models.py, mnist_tf2/optimizers.py).

Imported by scripts/benchmark.py only when asked for (`--peers=torch`).
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NAME = "torch"
# The ways to run it that the benchmark tries (the faster wins): trainer() keyword arguments.
VARIANTS = {"eager": {"compiled": False}, "torch.compile": {"compiled": True}}


def version() -> str:
  return f"torch {torch.__version__}"


def _dense(fan_in, units, init):
  layer = nn.Linear(fan_in, units)
  if init == "zeros":
    nn.init.zeros_(layer.weight)
  elif init == "tutorial":  # truncated normal, stddev 1/sqrt(fan_in), cut at 2 stddev
    std = 1.0 / math.sqrt(fan_in)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
  else:  # Keras' default: Glorot uniform
    nn.init.xavier_uniform_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


class Softmax(nn.Module):

  def __init__(self):
    super().__init__()
    self.logits = _dense(784, 10, "zeros")

  def forward(self, x):
    return self.logits(torch.flatten(x, 1))


class MLP(nn.Module):

  def __init__(self, hidden1=128, hidden2=32):
    super().__init__()
    self.hidden1 = _dense(784, hidden1, "tutorial")
    self.hidden2 = _dense(hidden1, hidden2, "tutorial")
    self.logits = _dense(hidden2, 10, "tutorial")

  def forward(self, x):
    x = F.relu(self.hidden1(torch.flatten(x, 1)))
    return self.logits(F.relu(self.hidden2(x)))


class CNN(nn.Module):

  def __init__(self, dropout_rate=0.4):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
    self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
    for conv in (self.conv1, self.conv2):
      nn.init.xavier_uniform_(conv.weight)
      nn.init.zeros_(conv.bias)
    self.dense = _dense(7 * 7 * 64, 1024, "glorot")
    self.logits = _dense(1024, 10, "glorot")
    self.dropout_rate = dropout_rate

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    # Flatten in Keras' (height, width, channels) order, as our dense layer sees it.
    x = F.relu(self.dense(torch.flatten(x.permute(0, 2, 3, 1), 1)))
    x = F.dropout(x, self.dropout_rate, self.training)
    return self.logits(x)


def create_model(config) -> nn.Module:
  if config.model == "softmax":
    return Softmax()
  if config.model == "mlp":
    return MLP(config.hidden1, config.hidden2)
  return CNN(config.dropout_rate)


def lr_factor(config):
  """Our WarmupSchedule (mnist_tf2/optimizers.py) as a LambdaLR factor of the step."""
  def factor(step):
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = min(max((step - config.warmup_steps) /
                       max(config.max_steps - config.warmup_steps, 1), 0.0), 1.0)
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)),
             "linear": 1.0 - progress}.get(config.lr_schedule, 1.0)
    return warmup * decay
  return factor


def trainer(config, images, labels, *, precision="float32", compiled=False):
  """A training loop on in-memory data; returns `run(num_steps) -> last loss`.

  Args:
    config: our run Config (model, batch_size, learning rate and schedule, seed).
    images: uint8 numpy array [N, 28, 28, 1].
    labels: int numpy array [N].
    precision: "float32" or "bfloat16" (autocast: matmuls and convolutions in
      bfloat16, weights and optimizer in float32).
    compiled: wrap the model in `torch.compile`.
  """
  torch.manual_seed(config.seed)
  model = create_model(config)
  if config.model == "cnn":
    model = model.to(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-7,
                               fused=True)
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
  forward = torch.compile(model) if compiled else model
  # One copy: the splits' arrays may be read-only (read from the data files), which
  # torch.from_numpy warns about. NHWC uint8 -> NCHW view in channels-last memory.
  data = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)
  targets = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
  batch_size, order, position = config.batch_size, torch.randperm(len(targets)), 0
  model.train()

  def run(num_steps):
    nonlocal order, position
    for _ in range(num_steps):
      if position + batch_size > len(order):  # a fresh permutation every epoch
        order, position = torch.randperm(len(targets)), 0
      index = order[position:position + batch_size]
      position += batch_size
      x, y = data[index].float().div_(255.0), targets[index]
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = F.cross_entropy(forward(x), y)
      loss.backward()
      optimizer.step()
      schedule.step()
    return float(loss.detach())  # a Python number: the steps are done

  return run
