"""Loss-weighting and gradient-manipulation methods (balancers)."""

from keras_mtl.balancers.aligned_mtl import AlignedMTL as AlignedMTL
from keras_mtl.balancers.base import Balancer as Balancer
from keras_mtl.balancers.base import BalanceResult as BalanceResult
from keras_mtl.balancers.base import available as available
from keras_mtl.balancers.base import deserialize as deserialize
from keras_mtl.balancers.base import get as get
from keras_mtl.balancers.base import register_balancer as register_balancer
from keras_mtl.balancers.base import serialize as serialize
from keras_mtl.balancers.cagrad import CAGrad as CAGrad
from keras_mtl.balancers.db_mtl import DBMTL as DBMTL
from keras_mtl.balancers.dtp import DTP as DTP
from keras_mtl.balancers.dualproj import DualProj as DualProj
from keras_mtl.balancers.dwa import DWA as DWA
from keras_mtl.balancers.equal_weighting import EqualWeighting as EqualWeighting
from keras_mtl.balancers.famo import FAMO as FAMO
from keras_mtl.balancers.gls import GLS as GLS
from keras_mtl.balancers.graddrop import GradDrop as GradDrop
from keras_mtl.balancers.gradnorm import GradNorm as GradNorm
from keras_mtl.balancers.gradvac import GradVac as GradVac
from keras_mtl.balancers.imtl import IMTL as IMTL
from keras_mtl.balancers.imtl_l import IMTLL as IMTLL
from keras_mtl.balancers.initial_loss_normalization import (
    InitialLossNormalization as InitialLossNormalization,
)
from keras_mtl.balancers.log_loss import LogLoss as LogLoss
from keras_mtl.balancers.mgda import MGDA as MGDA
from keras_mtl.balancers.mgda_ub import MGDAUB as MGDAUB
from keras_mtl.balancers.nash_mtl import NashMTL as NashMTL
from keras_mtl.balancers.pcgrad import PCGrad as PCGrad
from keras_mtl.balancers.rlw import RLW as RLW
from keras_mtl.balancers.static_weighting import StaticWeighting as StaticWeighting
from keras_mtl.balancers.uncertainty_weighting import UncertaintyWeighting as UncertaintyWeighting
from keras_mtl.balancers.upgrad import UPGrad as UPGrad
