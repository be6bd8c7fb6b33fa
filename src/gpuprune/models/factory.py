"""Model registry and factory: a registered name or ``package.module:factory``.

A ``module:factory`` name imports and runs code, so it is honoured only when the user gave it
(an API argument or a command-line option, ``allow_import=True``). Names read from files (pruned
model headers, run configs) go through :class:`ModelSpec.build`, which resolves them through the
registry only: a file never chooses code to run.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from gpuprune.errors import UserError
from gpuprune.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def list_models() -> list[str]:
    """Names of the registered models."""
    _load_builtin()
    return MODELS.names()


def _load_builtin() -> None:
    # The builtin modules register themselves on import; importing here avoids a cycle.
    from gpuprune.models import resnet, tiny, vgg  # noqa: F401


def _import_factory(spec: str) -> ModelFactory:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(
            f"model {spec!r} is not 'package.module:factory'",
            "write e.g. 'mypkg.nets:build' or a registered name: " + ", ".join(list_models()),
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module {module_name!r} for model {spec!r} ({exc})",
            "check the module is installed or on PYTHONPATH",
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(
            f"module {module_name!r} has no callable {attr!r}",
            "name a function or class that returns an nn.Module",
        )
    return factory


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
    *, allow_import: bool = True,
) -> nn.Module:
    """Build a model by registered name or ``package.module:factory``.

    Args:
        name: a name from :func:`list_models` or ``package.module:factory``. A user factory is
            called with the same keyword arguments it accepts among ``num_classes``,
            ``in_channels`` and ``width``.
        num_classes: output classes.
        in_channels: input image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        width: multiplier on every layer's channel count (0.25 gives VGG16 with 16..128 channels).
        allow_import: honour ``module:factory`` names; pass False for a name read from a file.

    Returns:
        The model, in training mode, on the CPU.
    """
    if num_classes < 1 or in_channels < 1:
        raise UserError(
            f"num_classes={num_classes} and in_channels={in_channels} must be >= 1",
            "pass positive integers",
        )
    if not width > 0:
        raise UserError(f"width={width} must be > 0", "pass e.g. width=0.25 or 1.0")
    if ":" in name:
        if not allow_import:
            raise UserError(
                f"model {name!r} comes from a file and names code to import, which gpuprune "
                "never runs on a file's say-so",
                "register the model (gpuprune.models.MODELS) or name the factory yourself "
                "(gpuprune.load(path, factory=...), --model on the command line)",
            )
        factory = _import_factory(name)
        kwargs = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
        try:
            params = inspect.signature(factory).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kwargs = {k: v for k, v in kwargs.items() if k in params}
        except (TypeError, ValueError):  # builtins without a signature: pass nothing
            kwargs = {}
        try:
            model = factory(**kwargs)
        except TypeError as exc:  # e.g. 'os:system': not a model factory
            raise UserError(
                f"factory {name!r} cannot be called with {sorted(kwargs) or 'no arguments'} "
                f"({exc})",
                "name a function or class that builds an nn.Module",
            ) from None
        if not isinstance(model, nn.Module):
            raise UserError(
                f"factory {name!r} returned {type(model).__name__}, not an nn.Module",
                "return a torch.nn.Module from the factory",
            )
        return model
    _load_builtin()
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, width=width)


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model again: its name and constructor sizes (stored in pruned files)."""

    name: str
    num_classes: int = 10
    in_channels: int = 3
    width: float = 1.0

    def build(self, *, allow_import: bool = False) -> nn.Module:
        """The model; ``module:factory`` names only with ``allow_import`` (never from a file)."""
        return create_model(self.name, self.num_classes, self.in_channels, self.width,
                            allow_import=allow_import)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "width": self.width}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, origin: str = "model record") -> ModelSpec:
        """Inverse of :meth:`to_dict`; a one-line UserError for a bad or missing value."""
        fix = "save the model again with `gpuprune prune` or gpuprune.save_pruned()"
        keys = ("name", "num_classes", "in_channels", "width")
        if not isinstance(data, Mapping) or set(data) != set(keys):
            raise UserError(f"{origin} is not {{{', '.join(keys)}}}: {data!r}"[:200], fix)
        name, width = data["name"], data["width"]
        if not isinstance(name, str) or not name:
            raise UserError(f"{origin}: model name {name!r} is not a name", fix)
        for key in ("num_classes", "in_channels"):
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                raise UserError(f"{origin}: {key} {v!r} is not a count in [1, 1e6]", fix)
        ok = isinstance(width, int | float) and not isinstance(width, bool)
        if not ok or not math.isfinite(width) or not 0 < width <= 64:
            raise UserError(f"{origin}: width {width!r} is not in (0, 64]", fix)
        return cls(name, data["num_classes"], data["in_channels"], float(width))
