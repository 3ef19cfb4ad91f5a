"""Post-training static int8 quantisation of a CNN for CPU inference (torch.ao FX graph mode).

Dynamic int8 (what ``inference.quantization`` does for transformers) covers ``nn.Linear`` only: on
a CNN it would quantise the classifier head and leave every convolution in fp32. Static
quantisation also covers the convolutions: conv + batch norm (+ ReLU) are fused, observers record
activation ranges on calibration images, and convert swaps in int8 kernels (quantised conv, the
residual ``add_relu``, linear). The calibration passes are part of the cost of serving this way.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def engine() -> str:
    """The quantised-kernel engine in use (x86/fbgemm on Intel/AMD, qnnpack on ARM)."""
    return str(torch.backends.quantized.engine)


def quantize_static_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """An int8 copy of ``model`` (the original is untouched), calibrated on ``calibration`` images."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    float_model = copy.deepcopy(model).float().cpu().eval()
    example = calibration[:1].float().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine()), example_inputs=(example,))
        with torch.no_grad():
            for start in range(0, len(calibration), batch_size):
                prepared(calibration[start: start + batch_size].float().cpu())
        return convert_fx(prepared)
