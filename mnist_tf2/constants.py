"""Facts about MNIST and the run that several modules share; no TensorFlow here.

Importing this module is cheap, so the command-line front ends can use it
before TensorFlow loads.
"""

IMAGE_SHAPE = (28, 28, 1)  # height, width, channels of every image the models see
NUM_CLASSES = 10  # the digits 0-9

# The splits of the data, in the order the final evaluation prints them, and
# the word the tutorial's evaluation line starts with ("Test Data Eval:").
SPLITS = ("train", "validation", "test")
SPLIT_TITLES = {"train": "Training", "validation": "Validation", "test": "Test"}
