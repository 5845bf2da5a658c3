"""The fused CPU kernels of `cpu_kernels.c` as autograd functions, compiled at first use.

The C file is compiled once per process with the system's C compiler (`$CC`, else `cc`;
about a second) into a temporary folder and bound with ctypes. Where there is no compiler
or the build fails, `available()` is False and the layers in `layers.py` take torch's own
path: same results to float rounding, only slower.

Measured on 2 cores (fp32, batch 64, training steps of the whole model with and without
the kernels, taking turns in one process): `ReLUMaxPool` made the basic CNN's step ~1.10×
and the CNN's ~1.04× faster, `BatchNormReLU` MobileNet's ~1.06×, `Dropout` the ViT's
~1.05×. All three layers are bound by memory traffic at these sizes (see the C file).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_ARGUMENT_TYPES = {"p": ctypes.c_void_p, "n": ctypes.c_long, "u": ctypes.c_uint64, "f": ctypes.c_float}
_SIGNATURES = {  # argument kinds: p a pointer, n a size, u an unsigned 64-bit integer, f a float
    "relu_max_pool_forward": "pppnnnn",
    "relu_max_pool_backward": "ppppnnnn",
    "channel_sums": "pnnp",
    "scale_shift_relu": "ppppnn",
    "scale_shift_relu_backward_sums": "pppppnnp",
    "scale_shift_relu_backward_input": "pppppppppnn",
    "dropout": "ppnuuf",
}


def available() -> bool:
    return _library() is not None


def applies_to(x: torch.Tensor) -> bool:
    """The kernels take channels-last float32 maps on the CPU."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and available())


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="mnist-lab-kernels-") as folder:
        target = Path(folder) / "cpu_kernels.so"
        build = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(target)], capture_output=True, text=True)
        if build.returncode != 0:
            first_error = (build.stderr.strip().splitlines() or ["no message"])[0]
            warnings.warn(f"the fused CPU kernels did not compile ({first_error}); using torch's own layers",
                          stacklevel=2)
            return None
        library = ctypes.CDLL(str(target))  # stays loaded after the file is removed
    for name, kinds in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = [_ARGUMENT_TYPES[kind] for kind in kinds]
        function.restype = None
    return library


def _call(name: str, *args) -> None:
    """Call a kernel with tensors passed as pointers to their data."""
    getattr(_library(), name)(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args))


def _channels_last(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)


class ReLUMaxPool(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) for even heights and widths; the gradient as torch computes it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = _channels_last(n, c, h // 2, w // 2)
        corner = _channels_last(n, c, h // 2, w // 2, dtype=torch.uint8)
        _call("relu_max_pool_forward", x, y, corner, n, h, w, c)
        ctx.save_for_backward(y, corner)
        ctx.input_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> torch.Tensor:
        y, corner = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad_x = _channels_last(n, c, h, w)
        _call("relu_max_pool_backward", grad_y.contiguous(memory_format=torch.channels_last), y, corner, grad_x,
              n, h, w, c)
        return grad_x


class BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) in training mode; updates the running statistics as BatchNorm2d does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = n * h * w
        sums = torch.empty(2, c, dtype=torch.float64)
        _call("channel_sums", x, rows, c, sums)
        mean = sums[0] / rows
        var = (sums[1] / rows - mean**2).clamp_(min=0)  # biased, for normalising
        invstd = (var + eps).rsqrt()
        scale = (weight.double() * invstd).float()
        shift = (bias.double() - mean * scale.double()).float()
        y = _channels_last(n, c, h, w)
        _call("scale_shift_relu", x, y, scale, shift, rows, c)
        running_mean.lerp_(mean.float(), momentum)
        running_var.lerp_((var * rows / max(rows - 1, 1)).float(), momentum)  # unbiased, as torch keeps it
        ctx.save_for_backward(x, scale, shift, mean.float(), invstd)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, scale, shift, mean, invstd = ctx.saved_tensors
        n, c, h, w = x.shape
        rows = n * h * w
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        sums = torch.empty(2, c, dtype=torch.float64)
        _call("scale_shift_relu_backward_sums", grad_y, x, scale, shift, mean, rows, c, sums)
        sum_g, sum_gx = sums
        grad_x = _channels_last(n, c, h, w)
        g_mean = (sum_g / rows).float()
        slope = (sum_gx / rows * invstd**2).float()
        # gain = weight · invstd, which is `scale`
        _call("scale_shift_relu_backward_input", grad_y, x, scale, shift, mean, scale, g_mean, slope, grad_x, rows, c)
        return grad_x, (sum_gx * invstd).float(), sum_g.float(), None, None, None, None


class Dropout(torch.autograd.Function):
    """Training-mode dropout of float32 tensors on the CPU: each element is dropped with
    probability p (to 2⁻³²), kept ones scaled by 1/(1-p). The seed comes from torch's
    generator, so `torch.manual_seed` repeats the masks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.mask = (int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)), round(p * 2**32), 1.0 / (1.0 - p))
        return _drop(x, *ctx.mask)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        return _drop(grad_y, *ctx.mask), None  # the same seed: the same elements dropped


def _drop(x: torch.Tensor, seed: int, dropped: int, scale: float) -> torch.Tensor:
    """x with the elements whose draw is below `dropped` (of 2³²) zeroed, the others scaled."""
    x = x.contiguous()  # element i of the mask is element i in row-major order
    y = torch.empty_like(x)
    _call("dropout", x, y, x.numel(), seed, dropped, scale)
    return y
