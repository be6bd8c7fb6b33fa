"""Convolution geometry: the one description of a convolution that kernels, the latency model,
the pruning plan and the CLI share, and the one output-size formula.

A Linear layer has no geometry (``None`` wherever a geometry is optional): it is a GEMM as is.
A Conv1d is a Conv2d with H = 1 (kernel, stride, padding and dilation 1 along H). String padding
(``'same'``/``'valid'``), uneven padding and non-zero ``padding_mode`` become an explicit
``pre_pad`` applied with ``F.pad`` before the kernel, which then runs with zero padding
``padding``. A grouped conv is ``groups`` GEMMs of ``[C_out/G, C_in/G*kh*kw]``;
:meth:`ConvGeometry.kernel` is what one skip-kernel call runs (one group, no pre-pad).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from gpuprune.errors import UnsupportedLayerError, UserError

Pair = tuple[int, int]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
CONV_LAYERS = (nn.Conv1d, nn.Conv2d)  # the convolutions with a geometry (others: listed dense)


def out_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (may be < 1: input smaller than the window)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair(value: Any, what: str) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise UserError(f"conv {what} {value!r} is not an int pair", f"give {what} as [h, w]")


def _lift(value: Any, dims: int, fill: int) -> Pair:
    """A Conv1d's 1-tuple as the (H, W) pair of a conv with H = 1."""
    value = tuple(value) if isinstance(value, list | tuple) else (value,) * dims
    return (fill, value[0]) if dims == 1 else (value[0], value[1])


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution walks its input (output channels are the GEMM's M).

    ``padding`` is the symmetric zero padding the kernel applies; ``pre_pad`` (left, right, top,
    bottom, the order of ``F.pad``) is padded first with ``padding_mode``.
    """

    in_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    pre_pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        for what in ("kernel_size", "stride", "padding", "dilation"):
            object.__setattr__(self, what, _pair(getattr(self, what), what))
        pre = self.pre_pad
        if not (isinstance(pre, list | tuple) and len(pre) == 4 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pre
        )):  # fmt: skip
            raise UserError(f"conv pre_pad {pre!r} is not 4 integers >= 0",
                            "give pre_pad as [left, right, top, bottom]")  # fmt: skip
        object.__setattr__(self, "pre_pad", tuple(int(v) for v in pre))
        if self.padding_mode not in PADDING_MODES:
            raise UserError(f"conv padding_mode {self.padding_mode!r} is unknown",
                            f"use one of {', '.join(PADDING_MODES)}")  # fmt: skip
        low = {"in_channels": self.in_channels, "kernel_size": min(self.kernel_size),
               "stride": min(self.stride), "dilation": min(self.dilation),
               "groups": self.groups}  # fmt: skip
        bad = [k for k, v in low.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if not bad and self.in_channels % self.groups:
            bad = ["groups"]
        if bad or min(self.padding) < 0:
            raise UserError(
                f"conv geometry has a bad {bad[0] if bad else 'padding'}: {self}",
                "sizes, strides, dilations and groups must be >= 1 (groups dividing in_channels)"
                " and padding >= 0",
            )

    @classmethod
    def of(cls, conv: nn.Module) -> ConvGeometry:
        """The geometry of a Conv2d or Conv1d (any groups, padding and padding mode).

        Raises:
            UnsupportedLayerError: any other layer (ConvTranspose2d: see :meth:`of_transposed`).
        """
        if not isinstance(conv, CONV_LAYERS):
            raise UnsupportedLayerError(
                f"a {type(conv).__name__}, which has no skip-kernel lowering",
                "only Conv1d and Conv2d run on the skip kernels; it stays dense",
            )
        dims = 1 if isinstance(conv, nn.Conv1d) else 2
        kernel = _lift(conv.kernel_size, dims, 1)
        stride = _lift(conv.stride, dims, 1)
        dilation = _lift(conv.dilation, dims, 1)
        if isinstance(conv.padding, str):  # 'valid' or 'same' (stride 1), as torch pads it
            totals = [0, 0] if conv.padding == "valid" else [
                d * (k - 1) for d, k in zip(dilation, kernel, strict=True)
            ]  # fmt: skip
        else:
            totals = [2 * p for p in _lift(conv.padding, dims, 0)]
        (th, tw) = totals
        even = th % 2 == 0 and tw % 2 == 0
        if conv.padding_mode == "zeros" and even:
            padding, pre = (th // 2, tw // 2), (0, 0, 0, 0)
        else:  # uneven 'same' padding or a non-zero mode: F.pad first, as torch does
            padding, pre = (0, 0), (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        return cls(conv.in_channels, kernel, stride, padding, dilation, conv.groups, pre,
                   conv.padding_mode)  # fmt: skip

    @classmethod
    def of_transposed(cls, deconv: nn.ConvTranspose2d) -> ConvGeometry:
        """The Conv2d a stride-1 ConvTranspose2d equals (weight in
        :func:`gpuprune.gemm.conv_layout`): same kernel and dilation, padding
        ``dilation * (k - 1) - padding`` on each side.

        Raises:
            UnsupportedLayerError: a stride > 1 (its Conv2d would run on the zero-stuffed input,
                stride_h * stride_w times the work), or padding past ``dilation * (k - 1)``.
        """
        name = type(deconv).__name__
        if not isinstance(deconv, nn.ConvTranspose2d):
            raise UnsupportedLayerError(f"a {name}, not a ConvTranspose2d",
                                        "pass a ConvTranspose2d")  # fmt: skip
        kernel, stride = _pair(deconv.kernel_size, "kernel_size"), _pair(deconv.stride, "stride")
        dilation, padding = _pair(deconv.dilation, "dilation"), _pair(deconv.padding, "padding")
        if stride != (1, 1):
            raise UnsupportedLayerError(
                f"ConvTranspose2d with stride {stride}: as a Conv2d it runs on its input with "
                f"{stride[0] - 1}x{stride[1] - 1} zeros stuffed between pixels, "
                f"{stride[0] * stride[1]}x the work of the layer, which the weight-block skip "
                "kernels cannot skip; left dense (its mask still applies)",
                "use stride 1 (e.g. upsample, then a Conv2d) to run it on the skip kernels",
            )
        pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding, strict=True))
        if min(pad) < 0:
            raise UnsupportedLayerError(
                f"ConvTranspose2d with padding {padding} past dilation * (kernel - 1): its Conv2d "
                "would crop its output; left dense (its mask still applies)",
                "use padding <= dilation * (kernel_size - 1)",
            )
        return cls(deconv.in_channels, kernel, (1, 1), pad, dilation, deconv.groups)

    def kernel(self) -> ConvGeometry:
        """What one skip-kernel call runs: one group's channels, no pre-pad."""
        return ConvGeometry(self.in_channels // self.groups, self.kernel_size, self.stride,
                            self.padding, self.dilation)  # fmt: skip

    @property
    def k(self) -> int:
        """GEMM K of one group: in_channels / groups * kh * kw."""
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def out_hw(self, h: int, w: int) -> Pair:
        """Output height and width for an ``h x w`` input."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size, self.stride, self.padding, self.dilation
        )
        left, right, top, bottom = self.pre_pad
        h, w = h + top + bottom, w + left + right
        return out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)

    def check_input(self, h: int, w: int) -> Pair:
        """``out_hw(h, w)``, or a UserError when the input is smaller than the window."""
        oh, ow = self.out_hw(h, w)
        if oh < 1 or ow < 1:
            raise UserError(
                f"input {h}x{w} is smaller than the Conv2d's receptive field "
                f"({self.kernel_size[0]}x{self.kernel_size[1]}, dilation {self.dilation}, "
                f"padding {self.padding})",
                "feed the input size the model was built for",
            )
        return oh, ow

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups,
                "pre_pad": list(self.pre_pad), "padding_mode": self.padding_mode}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "conv geometry") -> ConvGeometry:
        """Inverse of :meth:`to_dict`; raises a one-line UserError naming ``origin``."""
        keys = {"in_channels", "kernel_size", "stride", "padding", "dilation"}
        extra = {"groups", "pre_pad", "padding_mode"}  # absent in files of gpuprune-plan/1
        if not isinstance(data, Mapping) or not keys <= set(data) <= keys | extra:
            raise UserError(
                f"{origin} is not a conv geometry {{{', '.join(sorted(keys))}}}: {data!r}"[:200],
                "save the file again with gpuprune",
            )
        ch = data["in_channels"]
        if not isinstance(ch, int) or isinstance(ch, bool):
            raise UserError(f"{origin}: in_channels {ch!r} is not an integer", "save it again")
        groups = data.get("groups", 1)
        if not isinstance(groups, int) or isinstance(groups, bool):
            raise UserError(f"{origin}: groups {groups!r} is not an integer", "save it again")
        mode = data.get("padding_mode", "zeros")
        if not isinstance(mode, str):
            raise UserError(f"{origin}: padding_mode {mode!r} is not a name", "save it again")
        return cls(ch, data["kernel_size"], data["stride"], data["padding"], data["dilation"],
                   groups, data.get("pre_pad", (0, 0, 0, 0)), mode)  # fmt: skip


__all__ = ["CONV_LAYERS", "PADDING_MODES", "ConvGeometry", "out_size"]
