"""Identity layer that marks the shared representation of a multi-task model."""

import threading

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mtl")
class SharedRepresentation(keras.layers.Layer):
    """Marks the tensor that all task towers read (identity in the forward pass).

    With `compile(gradient_mode="representation")` the gradient engine takes
    each task's gradient with respect to this tensor instead of the shared
    weights, balances those, and backpropagates the balanced gradient through
    the trunk once (the MGDA-UB trick of Sener & Koltun, 2018). A model should
    contain exactly one such layer, applied once.

    Call arguments:
        inputs: any tensor.

    Returns:
        `inputs`, unchanged.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((4,))
    >>> z = keras_mtl.layers.SharedRepresentation()(keras.layers.Dense(3)(x))
    >>> tuple(z.shape)
    (None, 3)

    References:
        Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
        NeurIPS 2018.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        # Set by the gradient engine while it records the forward pass. Per
        # thread: tf.distribute runs each replica's step in its own thread,
        # and a collective in a tower (synchronized batch normalisation) lets
        # another replica's forward pass run between a replica's call and
        # its read of the recorded tensor.
        self._thread_state = threading.local()

    @property
    def _recording(self) -> bool:
        return getattr(self._thread_state, "recording", False)

    @_recording.setter
    def _recording(self, value: bool) -> None:
        self._thread_state.recording = value

    @property
    def _recorded(self):
        return getattr(self._thread_state, "recorded", None)

    @_recorded.setter
    def _recorded(self, value) -> None:
        self._thread_state.recorded = value

    def call(self, inputs):
        outputs = ops.copy(inputs)
        if self._recording:
            self._recorded = outputs
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape
