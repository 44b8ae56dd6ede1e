"""Environments, task table, episode files and stage 1.

Importing the package sets TensorFlow's CPU defaults before TensorFlow can load, for every stage:
oneDNN kernels on (TensorFlow enables them by default only on AVX-512 CPUs; on AVX2 machines V
trains ≈ 1.5× slower without them), and start-up log noise off. Both can be overridden from the
environment.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
