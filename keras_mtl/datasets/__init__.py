"""Dataset loaders: `keras_mtl.datasets.<name>.load_data(data_dir=None, ...)`."""

from keras_mtl.datasets import ali_ccp as ali_ccp
from keras_mtl.datasets import aliexpress as aliexpress
from keras_mtl.datasets import census_income as census_income
from keras_mtl.datasets import emotions as emotions
from keras_mtl.datasets import multi_fashion as multi_fashion
from keras_mtl.datasets import multi_fashion_mnist as multi_fashion_mnist
from keras_mtl.datasets import multi_mnist as multi_mnist
from keras_mtl.datasets import qm9 as qm9
from keras_mtl.datasets import synthetic as synthetic
