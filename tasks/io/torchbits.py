"""torch's dtypes and tensors in the engine's terms: safetensors dtype codes and the numpy arrays the engine streams
(`stfile.ARRAY_DTYPES`). Only code that has torch loaded anyway (training, the test bed, pickle weights) uses it:
the engine itself never imports torch."""

from __future__ import annotations

import numpy as np
import torch

from .stfile import ARRAY_DTYPES

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in FLOAT_DTYPES.items()}
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_array(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as a flat array in the engine's representation (`ARRAY_DTYPES`): the bits of bf16 and
    fp16, the values of float32 and float64; any other tensor as its raw bytes (uint8), which is what a writer needs.

    The array shares the tensor's memory when the tensor is contiguous."""
    flat = t.detach().contiguous().reshape(-1)
    code = DTYPE_CODES.get(t.dtype)
    if code is None:
        return flat.view(torch.uint8).numpy()
    return flat.view(_SAME_WIDTH_INT[t.element_size()]).numpy().view(ARRAY_DTYPES[code])
