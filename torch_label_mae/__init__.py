"""torch-label-mae: complete broken semantic-segmentation labels with L-MAE (label masked autoencoder)."""

from .completer import LabelCompleter
from .data import FolderDataset, degrade
from .evaluate import evaluate
from .fusion import fuse_map
from .hub import HubError, list_pretrained
from .masking import (
    background_first_masking,
    hidden_from_missing,
    label_first_masking,
    mixed_masking,
    random_masking,
)
from .metrics import SegmentationMetrics
from .model import LMAE, LMAEConfig
from .transforms import CompleteLabels

__version__ = "0.1.0"

__all__ = [
    "LMAE",
    "CompleteLabels",
    "FolderDataset",
    "HubError",
    "LMAEConfig",
    "LabelCompleter",
    "SegmentationMetrics",
    "background_first_masking",
    "degrade",
    "evaluate",
    "fuse_map",
    "hidden_from_missing",
    "label_first_masking",
    "list_pretrained",
    "mixed_masking",
    "random_masking",
]
