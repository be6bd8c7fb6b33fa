"""Convolution geometry: the one description of a groups=1 Conv2d that kernels, the latency model,
the pruning plan and the CLI share, and the one output-size formula.

A Linear layer has no geometry (``None`` wherever a geometry is optional): it is a GEMM as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from gpuprune.errors import UnsupportedLayerError, UserError

Pair = tuple[int, int]


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


@dataclass(frozen=True)
class ConvGeometry:
    """How a groups=1, zero-padded Conv2d walks its input (output channels are the GEMM's M)."""

    in_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)

    def __post_init__(self) -> None:
        for what in ("kernel_size", "stride", "padding", "dilation"):
            object.__setattr__(self, what, _pair(getattr(self, what), what))
        low = {"in_channels": self.in_channels, "kernel_size": min(self.kernel_size),
               "stride": min(self.stride), "dilation": min(self.dilation)}  # fmt: skip
        bad = [k for k, v in low.items() if not isinstance(v, int) or v < 1]
        if bad or min(self.padding) < 0:
            raise UserError(
                f"conv geometry has a bad {bad[0] if bad else 'padding'}: {self}",
                "sizes, strides and dilations must be >= 1 and padding >= 0",
            )

    @classmethod
    def of(cls, conv: nn.Module) -> ConvGeometry:
        """The geometry of ``conv``.

        Raises:
            UnsupportedLayerError: a grouped conv, or string/non-zero padding modes.
        """
        if not isinstance(conv, nn.Conv2d):
            raise UnsupportedLayerError(
                f"{type(conv).__name__} is not a Conv2d", "only Conv2d layers have a conv geometry"
            )
        if conv.groups != 1:
            raise UnsupportedLayerError(
                f"a grouped Conv2d (groups={conv.groups})",
                "the skip kernels take groups=1 convolutions; leave it dense",
            )
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"a Conv2d with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}",
                "use integer zero padding, or leave the layer dense",
            )
        return cls(conv.in_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   tuple(conv.padding), tuple(conv.dilation))  # fmt: skip

    @property
    def k(self) -> int:
        """GEMM K: in_channels * kh * kw."""
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def out_hw(self, h: int, w: int) -> Pair:
        """Output height and width for an ``h x w`` input."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size, self.stride, self.padding, self.dilation
        )
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
                "dilation": list(self.dilation)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "conv geometry") -> ConvGeometry:
        """Inverse of :meth:`to_dict`; raises a one-line UserError naming ``origin``."""
        keys = {"in_channels", "kernel_size", "stride", "padding", "dilation"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise UserError(
                f"{origin} is not a conv geometry {{{', '.join(sorted(keys))}}}: {data!r}"[:200],
                "save the file again with gpuprune",
            )
        ch = data["in_channels"]
        if not isinstance(ch, int) or isinstance(ch, bool):
            raise UserError(f"{origin}: in_channels {ch!r} is not an integer", "save it again")
        return cls(ch, data["kernel_size"], data["stride"], data["padding"], data["dilation"])


__all__ = ["ConvGeometry", "out_size"]
