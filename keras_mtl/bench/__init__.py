"""The `keras-mtl bench` harness: train architecture x balancer combinations and STL baselines
on a dataset, over seeds, and report per-task metrics, Δm, speed and the Pareto front."""

from keras_mtl.bench.runner import BenchConfig as BenchConfig
from keras_mtl.bench.runner import run_bench as run_bench
