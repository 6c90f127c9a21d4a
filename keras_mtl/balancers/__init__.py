"""Loss-weighting and gradient-manipulation methods (balancers)."""

from keras_mtl.balancers.base import BalanceResult as BalanceResult
from keras_mtl.balancers.base import Balancer as Balancer
from keras_mtl.balancers.base import available as available
from keras_mtl.balancers.base import deserialize as deserialize
from keras_mtl.balancers.base import get as get
from keras_mtl.balancers.base import register_balancer as register_balancer
from keras_mtl.balancers.base import serialize as serialize
from keras_mtl.balancers.equal_weighting import EqualWeighting as EqualWeighting
from keras_mtl.balancers.static_weighting import StaticWeighting as StaticWeighting

# -- loss-weighting methods (issue 4): one import line per method, alphabetical --

# -- gradient methods (issue 5): one import line per method, alphabetical --
