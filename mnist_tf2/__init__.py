"""mnist_tf2: the classic TensorFlow MNIST tutorials, done the TensorFlow 2 way."""

from mnist_tf2 import hardware as _hardware

__version__ = "0.1.0"

_hardware.enable_onednn()  # Before anything imports TensorFlow; see its docstring.
