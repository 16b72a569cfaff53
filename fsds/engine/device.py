"""Where and how fast the network runs: device, autocast precision, memory layout.

:func:`set_up_runtime` is the one place that turns the settings (``train.device``,
``train.precision``, ``train.channels_last``, ``train.fp32_depthwise``, ``train.num_threads``,
or ``fsds predict``'s flags) into a :class:`Runtime`; training, the predict stage, calibration and
``fsds predict`` all take theirs from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fsds.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested (train.device, or fsds predict --device) but no CUDA device is "
                          "available; use auto or cpu")
    return torch.device(name)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The instruction-set flags of the CPU (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...)."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model name with its family/model numbers (the name alone does not tell Zen 3 from
    Zen 5), e.g. ``AMD EPYC (family 26 model 2)``."""
    info = _cpuinfo()
    name = info.get("model name", "unknown CPU")
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def cpu_model() -> str:
    """The CPU as a report names it: model, family/model numbers, cores and its fastest vector
    unit, e.g. ``AMD EPYC (family 23 model 1), 2 cores, AVX2``."""
    name, flags = cpu_name(), cpu_flags()
    units = [unit for unit, flag in (("AMX bf16", "amx_bf16"), ("AVX-512 bf16", "avx512_bf16")) if flag in flags]
    if not units:
        units = ["AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores, {', '.join(units)}"


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 bf16 or AMX), which is what makes it pay."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on CUDA GPUs that have it and
    on CPUs with native bf16, else fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def resolve_channels_last(setting: bool | str, amp_dtype: torch.dtype | None, *, training: bool) -> bool:
    """Whether the network and its inputs use NHWC memory. ``auto``: always for prediction; for
    training only under bf16 autocast: NHWC speeds up bf16 training and prediction, but slows fp32
    training (lab/findings/history.md, Speed)."""
    if setting == "auto":
        return not training or amp_dtype is not None
    return bool(setting)


def resolve_fp32_depthwise(setting: bool | str, amp_dtype: torch.dtype | None, device: torch.device) -> bool:
    """Whether training runs depthwise convolutions in fp32 under autocast. ``auto``: under bf16 on a
    CPU, where oneDNN's bf16 depthwise backward takes several times as long as fp32's (the 5x5 ones of
    EfficientNet-Lite most; lab/findings/benchmark.md)."""
    if amp_dtype is None:
        return False
    if setting == "auto":
        return device.type == "cpu"
    return bool(setting)


class Fp32DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that leaves autocast: fp32 in, fp32 out (the next layer casts back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def depthwise_in_fp32(model: nn.Module, on: bool = True) -> int:
    """Switch the model's depthwise convolutions (groups = input channels > 1) to run in fp32 under
    autocast, or back (``on=False``), in place; returns how many. Weights and state dict keys stay
    as they are: only the class of those modules changes (plain ``nn.Conv2d`` ones only, so a
    subclass with its own forward, such as timm's same-padding convolution, is left alone)."""
    source, target = (nn.Conv2d, Fp32DepthwiseConv2d) if on else (Fp32DepthwiseConv2d, nn.Conv2d)
    count = 0
    for module in model.modules():
        if type(module) is source and module.groups > 1 and module.groups == module.in_channels:
            module.__class__ = target
            count += 1
    return count


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs, every setting resolved."""

    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast, or None for plain fp32
    channels_last: bool  # NHWC memory for the network and its inputs
    fp32_depthwise: bool = False  # training under bf16: depthwise convolutions in fp32

    @property
    def precision(self) -> str:
        return "fp32" if self.amp_dtype is None else "bf16"

    def autocast(self) -> torch.autocast:
        """The autocast context the network runs its forward pass in (off under fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)


def set_up_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | str = "auto",
                   fp32_depthwise: bool | str = "auto", num_threads: int = 0, *, training: bool) -> Runtime:
    """Resolve the settings into a :class:`Runtime` for training or for prediction (``training``):
    ``auto`` device is CUDA where there is one, ``auto`` precision bf16 where the hardware runs it
    natively, ``auto`` layout NHWC for prediction and for bf16 training, ``auto`` fp32 depthwise under
    bf16 training on a CPU. ``num_threads`` (0: torch's default) is set for the process here."""
    if num_threads:
        torch.set_num_threads(num_threads)
    where = resolve_device(device)
    amp_dtype = resolve_precision(precision, where)
    return Runtime(where, amp_dtype, resolve_channels_last(channels_last, amp_dtype, training=training),
                   training and resolve_fp32_depthwise(fp32_depthwise, amp_dtype, where))
