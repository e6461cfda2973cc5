"""The benchmark's JAX peer: our three models trained the way flax's MNIST example does.

Flax's own example (github.com/google/flax, examples/mnist/train.py) in
outline: a `flax.linen` module, a `TrainState` holding parameters and the optax
optimizer, one `jax.jit`-compiled train step (`value_and_grad`, then
`apply_gradients`), called from a Python loop over shuffled batches. Done well
for a CPU: the data held on the device, each batch gathered inside the jitted
step, the state donated to it, bfloat16 as flax does it (`dtype=` the compute
type, parameters in float32). The layers, their initialisation, Adam (epsilon
1e-7, as Keras) and the learning-rate schedule are ours (mnist_tf2/models.py,
mnist_tf2/optimizers.py).

Imported by scripts/benchmark.py only when asked for (`--peers=jax`).
"""

import functools

import flax
from flax import linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

NAME = "jax"
# The ways to run it that the benchmark tries: trainer() keyword arguments.
VARIANTS = {"jax.jit": {}}


def version() -> str:
  return f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"


def _tutorial_init(key, shape, dtype=jnp.float32):
  # truncated normal, stddev 1/sqrt(fan_in), cut at 2 stddev (as Keras' TruncatedNormal)
  return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) / np.sqrt(shape[0])


class Softmax(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10, kernel_init=nn.initializers.zeros, dtype=self.dtype)(x)


class MLP(nn.Module):
  hidden1: int = 128
  hidden2: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden1, kernel_init=_tutorial_init, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(self.hidden2, kernel_init=_tutorial_init, dtype=self.dtype)(x))
    return nn.Dense(10, kernel_init=_tutorial_init, dtype=self.dtype)(x)


class CNN(nn.Module):
  dropout_rate: float = 0.4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    glorot = nn.initializers.xavier_uniform()  # Keras' default
    x = nn.relu(nn.Conv(32, (5, 5), kernel_init=glorot, dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(64, (5, 5), kernel_init=glorot, dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(1024, kernel_init=glorot, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(10, kernel_init=glorot, dtype=self.dtype)(x)


def create_model(config, dtype):
  if config.model == "softmax":
    return Softmax(dtype=dtype)
  if config.model == "mlp":
    return MLP(config.hidden1, config.hidden2, dtype=dtype)
  return CNN(config.dropout_rate, dtype=dtype)


def learning_rate(config):
  """Our WarmupSchedule (mnist_tf2/optimizers.py) as an optax schedule."""
  def schedule(step):
    warmup = (jnp.minimum(1.0, (step + 1) / config.warmup_steps)
              if config.warmup_steps else 1.0)
    progress = jnp.clip((step - config.warmup_steps) /
                        max(config.max_steps - config.warmup_steps, 1), 0.0, 1.0)
    decay = {"cosine": 0.5 * (1 + jnp.cos(jnp.pi * progress)),
             "linear": 1.0 - progress}.get(config.lr_schedule, 1.0)
    return config.learning_rate * warmup * decay
  return schedule


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state, images, labels, index, dropout_key):
  """One step on the batch `images[index]`; the whole step is one XLA program."""
  x = images[index].astype(jnp.float32) / 255.0
  y = labels[index]
  key = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": key})
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def trainer(config, images, labels, *, precision="float32"):
  """A training loop on in-memory data; returns `run(num_steps) -> last loss`.

  Args:
    config: our run Config (model, batch_size, learning rate and schedule, seed).
    images: uint8 numpy array [N, 28, 28, 1].
    labels: int numpy array [N].
    precision: "float32" or "bfloat16" (flax's `dtype`: layers compute in
      bfloat16, parameters and optimizer in float32).
  """
  dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
  model = create_model(config, dtype)
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  params = model.init(init_key, jnp.zeros((1, 28, 28, 1)))["params"]
  tx = optax.adam(learning_rate(config), eps=1e-7)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  images, labels = jax.device_put(images), jax.device_put(labels)
  batch_size, rng = config.batch_size, np.random.default_rng(config.seed)
  order, position = rng.permutation(len(labels)), 0

  def run(num_steps):
    nonlocal state, order, position
    for _ in range(num_steps):
      if position + batch_size > len(order):  # a fresh permutation every epoch
        order, position = rng.permutation(len(labels)), 0
      index = order[position:position + batch_size]
      position += batch_size
      state, loss = train_step(state, images, labels, index, dropout_key)
    return float(loss)  # waits for the steps to finish

  return run
