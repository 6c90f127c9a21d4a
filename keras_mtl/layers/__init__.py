"""Multi-task architecture building blocks, one Keras layer per file."""

from keras_mtl.layers.cgc import CGC as CGC
from keras_mtl.layers.customized_sharing import CustomizedSharing as CustomizedSharing
from keras_mtl.layers.dselect_k import DSelectK as DSelectK
from keras_mtl.layers.esmm import ESMM as ESMM
from keras_mtl.layers.expert_bank import ExpertBank as ExpertBank
from keras_mtl.layers.gate import Gate as Gate
from keras_mtl.layers.mmoe import MMoE as MMoE
from keras_mtl.layers.ple import PLE as PLE
from keras_mtl.layers.shared_bottom import SharedBottom as SharedBottom
from keras_mtl.layers.shared_representation import SharedRepresentation as SharedRepresentation
