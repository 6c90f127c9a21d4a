"""Dataset loaders: `keras_mtl.datasets.<name>.load_data(data_dir=None, ...)`."""

from keras_mtl.datasets import synthetic as synthetic

# -- real datasets (issue 6): one import line per module, alphabetical --
