"""The multiscale encoder (transformers-style: configuration, modeling, losses, masking)."""

from msenc_lib.model.configuration import PRESETS, MultiscaleEncoderConfig
from msenc_lib.model.modeling import (MultiscaleEncoderForMaskedLM, MultiscaleEncoderModel,
                                      MultiscaleEncoderPreTrainedModel)


def register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel``/``AutoModelForMaskedLM`` know ``model_type: msenc``."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    AutoConfig.register("msenc", MultiscaleEncoderConfig, exist_ok=True)
    AutoModel.register(MultiscaleEncoderConfig, MultiscaleEncoderModel, exist_ok=True)
    AutoModelForMaskedLM.register(MultiscaleEncoderConfig, MultiscaleEncoderForMaskedLM, exist_ok=True)


register_auto_classes()

__all__ = ["PRESETS", "MultiscaleEncoderConfig", "MultiscaleEncoderModel", "MultiscaleEncoderForMaskedLM",
           "MultiscaleEncoderPreTrainedModel", "register_auto_classes"]
