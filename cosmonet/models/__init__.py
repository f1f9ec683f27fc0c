"""Neural-network models of cosmonet (periodic 3D convolutions).

``build_model(name, **kwargs)`` builds a registered model ("unet": the D3M U-Net;
"paramnet": the parameter-inference conv-net of Ravanbakhsh et al.);
``model_signature(model)`` gives ``{"name", "kwargs"}`` to store in a checkpoint and
``check_signature(saved, model)`` / ``build_from_signature(saved)`` use it on loading;
``count_parameters`` counts trainable parameters; ``count_flops`` (from ``flops``) counts
convolution FLOPs for an input shape.

Adding a model: in a new module of this package, decorate the class with
``@register_model("paramnet")`` (keep the constructor arguments in ``self.config``) and
import that module below so that it registers on ``import cosmonet.models``.
"""
from .flops import FlopReport, count_flops
from .layers import (ConvBlock, DoubleConv, DownBlock, PeriodicConv3d, PeriodicConvTranspose3d, UpBlock,
                     periodic_pad)
from .registry import (available_models, build_from_signature, build_model, check_signature, count_parameters,
                       model_signature, register_model, signature_differences)
from . import unet as _unet  # noqa: F401  (registers "unet")
from . import paramnet as _paramnet  # noqa: F401  (registers "paramnet")
from .paramnet import ParamNet
from .unet import UNet

__all__ = [
    "ConvBlock", "DoubleConv", "DownBlock", "UpBlock", "PeriodicConv3d", "PeriodicConvTranspose3d", "periodic_pad",
    "FlopReport", "count_flops", "ParamNet", "UNet", "available_models", "build_model", "build_from_signature",
    "check_signature", "count_parameters", "model_signature", "register_model", "signature_differences",
]
