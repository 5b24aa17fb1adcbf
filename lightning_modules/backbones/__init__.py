"""Backbone registry: the name used in configs/backbone/<name>.yaml -> class."""
from __future__ import annotations

from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.context_encoder import ContextEncoderBackbone
from lightning_modules.backbones.conv_feature_encoder import ConvFeatureEncoderBackbone
from lightning_modules.backbones.deeptalk import DeepTalkBackbone
from lightning_modules.backbones.ge2e import GE2EBackbone

BACKBONES: dict[str, type[Backbone]] = {"deeptalk": DeepTalkBackbone, "ge2e": GE2EBackbone,
                                        "data2vec_cnn": ConvFeatureEncoderBackbone,
                                        "context_encoder": ContextEncoderBackbone}


def flops_per_second_of_audio(backbone: Backbone) -> float:
    """FLOPs to turn one second of audio into frames and an embedding (analytic, long-clip limit, no window overlap)."""
    if not hasattr(backbone, "flops_per_second"):
        raise TypeError(f"{type(backbone).__name__} has no analytic flops_per_second(); count it with "
                        "torch.utils.flop_counter.FlopCounterMode instead")
    return float(backbone.flops_per_second())


__all__ = ["BACKBONES", "Backbone", "ContextEncoderBackbone", "ConvFeatureEncoderBackbone", "DeepTalkBackbone",
           "GE2EBackbone", "flops_per_second_of_audio"]
