"""The TBPS-CLIP model (open_clip dual encoder with the recipe's changes) and weight loading.

Importing this package registers the tiny CPU model configs (``TBPS-Tiny-RN``, ``TBPS-Tiny-ViT``)
with open_clip.
"""

from tbps.model.checkpoint_load import LoadReport, load_checkpoint_weights, read_weights_file
from tbps.model.clip import BuiltModel, SimCLRHead, TBPSModel, build_model
from tbps.model.param_groups import param_groups
from tbps.model.tiny import TINY_MODELS, TINY_RN, TINY_VIT, register_tiny_configs
from tbps.model.trained import TrainedModel, load_trained_model

register_tiny_configs()

__all__ = [
    "TINY_MODELS", "TINY_RN", "TINY_VIT", "BuiltModel", "LoadReport", "SimCLRHead", "TBPSModel",
    "TrainedModel", "build_model", "load_checkpoint_weights", "load_trained_model", "param_groups",
    "read_weights_file", "register_tiny_configs",
]
