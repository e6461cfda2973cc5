"""mnist_tf2: the classic TensorFlow MNIST tutorials, done the TensorFlow 2 way."""

import os

__version__ = "0.1.0"

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512
# VNNI or newer (TensorFlow RFC 400). Elsewhere, e.g. on AVX2-only CPUs, it runs
# the cnn's convolutions with Eigen at about half the speed (docs/PERFORMANCE.md).
# It must be set before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 in the
# environment still turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
