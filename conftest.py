"""Test-wide settings: quiet TensorFlow, the TensorFlow backend, small thread pools."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
