"""mnist_tf2: the classic TensorFlow MNIST tutorials, done the TensorFlow 2 way."""

__version__ = "0.1.0"
