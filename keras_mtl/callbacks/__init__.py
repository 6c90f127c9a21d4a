"""Training callbacks for multi-task models."""

from keras_mtl.callbacks.gate_monitor import GateMonitor as GateMonitor
