"""Entire Space Multi-task Model (ESMM) for CTR and CVR."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_mtl._validation import check_bool, check_rate, check_units
from keras_mtl.layers.cgc import check_one_input
from keras_mtl.layers.expert_bank import fresh_initializer
from keras_mtl.layers.shared_bottom import SharedBottom

_ONE_INPUT_HINT = (
    "Concatenate the features (e.g. with `keras.layers.Concatenate`) into one tensor first."
)


@keras.saving.register_keras_serializable(package="keras_mtl")
class ESMM(keras.layers.Layer):
    """CTR and CVR towers on a shared representation, trained over all impressions.

    The layer reads the shared representation of an impression (typically
    the concatenated feature embeddings, whose lookup tables are therefore
    shared by both towers, optionally followed by a shared MLP trunk
    `shared_units`) and computes `pCTR = p(click | x)` with one tower and
    `pCVR = p(conversion | click, x)` with the other. It returns the dict
    `{"ctr": pCTR, "ctcvr": pCTR * pCVR}` (plus `"cvr"` with
    `return_cvr=True`), which can be passed directly as the `outputs` of a
    `keras_mtl.MultiTaskModel`, making `"ctr"` and `"ctcvr"` the task names.

    Labels, as in the paper: both tasks are trained on every impression (the
    entire space), `"ctr"` on the click label and `"ctcvr"` on the
    click-and-convert label `click * conversion`; pCVR gets no direct label
    and is learned through pCTCVR, which avoids the sample-selection bias of
    training CVR on clicked impressions only. `ESMM.labels(click,
    conversion)` builds the label dict. Use binary cross-entropy for both
    tasks. The probabilities are computed in float32.

    Args:
        tower_units: positive integer or sequence, hidden widths of each
            tower (each tower ends in a 1-unit sigmoid layer).
        shared_units: `None`, or hidden widths of an MLP trunk shared by both
            towers.
        activation: activation of the hidden layers.
        dropout: dropout rate in `[0, 1)` after each hidden layer.
        return_cvr: whether to add `"cvr"` (pCVR) to the outputs. pCVR has
            no label, and every output of a `MultiTaskModel` is a task: train
            a `MultiTaskModel` on the `"ctr"` and `"ctcvr"` outputs and read
            pCVR from a `keras.Model` on all three (second example).
        kernel_initializer: initializer of the kernels.
        kernel_regularizer: regularizer of the kernels.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to every output.
        training: whether dropout is active.

    Returns:
        A dict of float32 tensors of shape `(batch, ..., 1)`: `"ctr"`,
        `"ctcvr"` and, with `return_cvr=True`, `"cvr"`.

    Raises:
        ValueError: for bad `tower_units`, `shared_units` or `dropout`, or
            (when called) a list of inputs.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((12,))
    >>> out = keras_mtl.layers.ESMM(tower_units=(8,))(x)
    >>> sorted(out), tuple(out["ctcvr"].shape)
    (['ctcvr', 'ctr'], (None, 1))
    >>> keras_mtl.layers.ESMM.labels([1, 0, 1], [1, 0, 0])["ctcvr"].ravel().tolist()
    [1.0, 0.0, 0.0]

    Training on the two labelled outputs and serving pCVR too:

    >>> import numpy as np
    >>> out = keras_mtl.layers.ESMM(tower_units=(8,), return_cvr=True)(x)
    >>> train = keras_mtl.MultiTaskModel(x, {"ctr": out["ctr"], "ctcvr": out["ctcvr"]})
    >>> train.compile(optimizer="sgd", loss="binary_crossentropy")
    >>> features = np.random.default_rng(0).random((16, 12)).astype("float32")
    >>> labels = keras_mtl.layers.ESMM.labels(features[:, 0] > 0.5, features[:, 1] > 0.5)
    >>> _ = train.fit(features, labels, epochs=1, verbose=0)
    >>> serve = keras.Model(x, out)  # the same layers, so the trained weights
    >>> p = serve.predict(features[:4], verbose=0)
    >>> trained = train.predict(features[:4], verbose=0)
    >>> sorted(p), bool(np.allclose(p["ctcvr"], p["ctr"] * p["cvr"], atol=1e-6))
    (['ctcvr', 'ctr', 'cvr'], True)
    >>> bool(np.allclose(p["ctcvr"], trained["ctcvr"]))
    True

    References:
        Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
        Estimating Post-Click Conversion Rate", SIGIR 2018.
    """

    def __init__(
        self,
        tower_units=(64,),
        shared_units=None,
        activation="relu",
        dropout: float = 0.0,
        return_cvr: bool = False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tower_units = check_units("tower_units", tower_units)
        self.shared_units = (
            None if shared_units is None else check_units("shared_units", shared_units)
        )
        self.dropout = check_rate("dropout", dropout)
        self.activation = keras.activations.get(activation)
        self.return_cvr = check_bool("return_cvr", return_cvr)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

        def mlp(units, name):
            return SharedBottom(
                units=units,
                activation=self.activation,
                dropout=self.dropout,
                kernel_initializer=fresh_initializer(self.kernel_initializer),
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name=name,
            )

        def head(name):
            # float32 so the probabilities and their product keep full precision.
            return keras.layers.Dense(
                1,
                activation="sigmoid",
                kernel_initializer=fresh_initializer(self.kernel_initializer),
                kernel_regularizer=self.kernel_regularizer,
                dtype="float32",
                name=name,
            )

        self.trunk = None if self.shared_units is None else mlp(self.shared_units, "trunk")
        self.ctr_tower = mlp(self.tower_units, "ctr_tower")
        self.cvr_tower = mlp(self.tower_units, "cvr_tower")
        self.ctr_head = head("ctr_head")
        self.cvr_head = head("cvr_head")

    @staticmethod
    def labels(click, conversion) -> dict:
        """The ESMM training labels over all impressions.

        Args:
            click: array-like of 0/1 click labels, one per impression.
            conversion: array-like of 0/1 conversion labels (0 for
                impressions without a click).

        Returns:
            `{"ctr": click, "ctcvr": click * conversion}` as float32 arrays
            of shape `(num_impressions, 1)`.

        Raises:
            ValueError: when `click` and `conversion` do not have the same
                number of labels (NumPy would broadcast a single label).
        """
        click = np.asarray(click, dtype="float32").reshape(-1, 1)
        conversion = np.asarray(conversion, dtype="float32").reshape(-1, 1)
        if conversion.shape != click.shape:
            raise ValueError(
                "Received an invalid value for `conversion`, expected one label per impression, "
                f"as many as `click` ({len(click)}). Received: {len(conversion)} labels"
            )
        return {"ctr": click, "ctcvr": click * conversion}

    def build(self, input_shape):
        check_one_input(self, input_shape, _ONE_INPUT_HINT)
        shape = tuple(input_shape)
        if self.trunk is not None:
            self.trunk.build(shape)
            shape = self.trunk.compute_output_shape(shape)
        for tower, head in ((self.ctr_tower, self.ctr_head), (self.cvr_tower, self.cvr_head)):
            tower.build(shape)
            head.build(tower.compute_output_shape(shape))

    def call(self, inputs, training=None):
        check_one_input(self, inputs, _ONE_INPUT_HINT)
        h = inputs if self.trunk is None else self.trunk(inputs, training=training)
        ctr = self.ctr_head(self.ctr_tower(h, training=training))
        cvr = self.cvr_head(self.cvr_tower(h, training=training))
        outputs = {"ctr": ctr, "ctcvr": ops.multiply(ctr, cvr)}
        if self.return_cvr:
            outputs["cvr"] = cvr
        return outputs

    def compute_mask(self, inputs, mask=None):
        # Acts per position: every probability keeps the input's padding mask.
        if mask is None:
            return None
        names = ("ctr", "ctcvr", "cvr") if self.return_cvr else ("ctr", "ctcvr")
        return dict.fromkeys(names, mask)

    def compute_output_shape(self, input_shape):
        check_one_input(self, input_shape, _ONE_INPUT_HINT)
        shape = tuple(input_shape)[:-1] + (1,)
        names = ("ctr", "ctcvr", "cvr") if self.return_cvr else ("ctr", "ctcvr")
        return dict.fromkeys(names, shape)

    def compute_output_spec(self, inputs, training=None):
        check_one_input(self, inputs, _ONE_INPUT_HINT)
        shapes = self.compute_output_shape(inputs.shape)
        return {name: keras.KerasTensor(shape, dtype="float32") for name, shape in shapes.items()}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tower_units": list(self.tower_units),
                "shared_units": None if self.shared_units is None else list(self.shared_units),
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "return_cvr": self.return_cvr,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
