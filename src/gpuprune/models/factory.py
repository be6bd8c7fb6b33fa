"""Model registry and factory: a registered name, ``timm:NAME``, ``torchvision:NAME`` or
``package.module:factory``.

A ``module:factory`` name imports and runs code, so it is honoured only when the user gave it
(an API argument or a command-line option, ``allow_import=True``). Names read from files (pruned
model headers, run configs) go through :class:`ModelSpec.build`, which resolves them through the
registry only: a file never chooses code to run. ``timm:`` and ``torchvision:`` are registered
*sources* (:data:`MODEL_SOURCES`): a fixed function of that library builds the named model from
its own registry, so a file may name them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gpuprune.errors import UserError
from gpuprune.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
# prefix -> builder(name, kwargs): model zoos whose names a file may hold (no code is named)
MODEL_SOURCES: Registry[Callable[[str, dict[str, Any]], nn.Module]] = Registry("model source")
# keyword arguments that fetch weights: meaningless (and a download) when a file holds them
WEIGHT_ARGS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
               "checkpoint_path")  # fmt: skip


def _import_zoo(package: str) -> Any:
    """Import a model-zoo package, or a one-line UserError naming the problem and the fix."""
    try:
        return importlib.import_module(package)
    except Exception as exc:  # ImportError, or a build whose compiled ops fail to load
        first = (str(exc).splitlines() or [""])[0][:100]
        raise UserError(
            f"cannot import {package} ({type(exc).__name__}: {first})",
            f"install {package} built for this torch (pip install {package}; a torchvision "
            "wheel must match the installed torch's version and CPU/CUDA build)",
        ) from None


@MODEL_SOURCES.register("torchvision")
def torchvision_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A torchvision model by name (``torchvision.models.get_model``)."""
    models = _import_zoo("torchvision").models
    if name not in models.list_models():
        raise UserError(f"torchvision has no model {name!r}",
                        "see torchvision.models.list_models(), e.g. 'resnet18'")  # fmt: skip
    return models.get_model(name, **kwargs)


@MODEL_SOURCES.register("timm")
def timm_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A timm model by name (``timm.create_model``)."""
    timm = _import_zoo("timm")
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r}",
                        "see timm.list_models(), e.g. 'resnet18'")  # fmt: skip
    return timm.create_model(name, **kwargs)


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
    *, allow_import: bool = True, kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a model by registered name, ``timm:NAME``, ``torchvision:NAME`` or
    ``package.module:factory``.

    Args:
        name: a name from :func:`list_models`, a model of a source in :data:`MODEL_SOURCES`
            (``timm:resnet18``, ``torchvision:resnet18``) or ``package.module:factory``. A user
            factory is called with the keyword arguments it accepts among ``num_classes``,
            ``in_channels`` and ``width``, then ``kwargs``.
        num_classes: output classes (gpuprune's own models and user factories; a timm or
            torchvision model takes its sizes from ``kwargs``, e.g. ``{"num_classes": 10}``).
        in_channels: input image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        width: multiplier on every layer's channel count (0.25 gives VGG16 with 16..128 channels).
        allow_import: honour ``module:factory`` names; pass False for a name read from a file.
        kwargs: more keyword arguments of the model's constructor (plain JSON values).

    Returns:
        The model, in training mode, on the CPU.
    """
    kwargs = check_kwargs(kwargs)
    if num_classes < 1 or in_channels < 1:
        raise UserError(
            f"num_classes={num_classes} and in_channels={in_channels} must be >= 1",
            "pass positive integers",
        )
    if not width > 0:
        raise UserError(f"width={width} must be > 0", "pass e.g. width=0.25 or 1.0")
    source, sep, zoo_name = name.partition(":")
    if sep and source in MODEL_SOURCES:
        return _checked_call(name, lambda: MODEL_SOURCES.get(source)(zoo_name, kwargs), kwargs)
    if ":" in name:
        if not allow_import:
            raise UserError(
                f"model {name!r} comes from a file and names code to import, which gpuprune "
                "never runs on a file's say-so",
                "register the model (gpuprune.models.MODELS) or name the factory yourself "
                "(gpuprune.load(path, factory=...), --model on the command line)",
            )
        factory = _import_factory(name)
        sizes = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
        try:
            params = inspect.signature(factory).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                sizes = {k: v for k, v in sizes.items() if k in params}
        except (TypeError, ValueError):  # builtins without a signature: pass nothing
            sizes = {}
        args = {**sizes, **kwargs}
        return _checked_call(name, lambda: factory(**args), args)
    _load_builtin()
    factory = MODELS.get(name)
    return _checked_call(name, lambda: factory(num_classes=num_classes, in_channels=in_channels,
                                               width=width, **kwargs), kwargs)  # fmt: skip


def _checked_call(name: str, build: Callable[[], Any], args: Mapping[str, Any]) -> nn.Module:
    """``build()``, with a bad argument or a non-module result as a one-line UserError."""
    try:
        model = build()
    except TypeError as exc:  # e.g. 'os:system', or a misspelt --model-args key
        raise UserError(
            f"model {name!r} cannot be built with {sorted(args) or 'no arguments'} ({exc})",
            "pass the keyword arguments its constructor takes (--model-args JSON), or name a "
            "function or class that builds an nn.Module",
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"factory {name!r} returned {type(model).__name__}, not an nn.Module",
            "return a torch.nn.Module from the factory",
        )
    return model


def check_kwargs(kwargs: Any, origin: str = "model arguments") -> dict[str, Any]:
    """``kwargs`` as a dict of plain JSON values with identifier keys, or a one-line UserError."""
    if kwargs is None:
        return {}
    fix = 'pass a JSON object of constructor arguments, e.g. {"num_classes": 1000}'
    if not isinstance(kwargs, Mapping):
        raise UserError(f"{origin} are a {type(kwargs).__name__}, not a mapping", fix)
    bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise UserError(f"{origin}: key {bad[0]!r} is not an argument name", fix)
    try:
        text = json.dumps(dict(kwargs), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise UserError(f"{origin} are not plain JSON ({err})", fix) from None
    if len(text) > 4096:
        raise UserError(f"{origin} are {len(text)} characters of JSON (at most 4096)", fix)
    return json.loads(text)


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model again: its name, constructor sizes and other constructor arguments
    (``kwargs``, plain JSON such as ``{"num_classes": 1000}`` for a timm/torchvision model);
    stored in pruned files. Arguments that fetch weights (:data:`WEIGHT_ARGS`) are not stored:
    the file holds the weights."""

    name: str
    num_classes: int = 10
    in_channels: int = 3
    width: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self, *, allow_import: bool = False) -> nn.Module:
        """The model; ``module:factory`` names only with ``allow_import`` (never from a file)."""
        return create_model(self.name, self.num_classes, self.in_channels, self.width,
                            allow_import=allow_import, kwargs=self.kwargs)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in check_kwargs(self.kwargs).items() if k not in WEIGHT_ARGS}
        return {"name": self.name, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "width": self.width,
                "kwargs": kwargs}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, origin: str = "model record") -> ModelSpec:
        """Inverse of :meth:`to_dict`; a one-line UserError for a bad or missing value."""
        fix = "save the model again with `gpuprune prune` or gpuprune.save_pruned()"
        keys = ("name", "num_classes", "in_channels", "width")
        # format 2 files have no kwargs; format 3 always writes them
        if not isinstance(data, Mapping) or set(data) - {"kwargs"} != set(keys):
            raise UserError(f"{origin} is not {{{', '.join(keys)}, kwargs}}: {data!r}"[:200], fix)
        kwargs = check_kwargs(data.get("kwargs"), f"{origin} kwargs")
        fetch = sorted(set(kwargs) & set(WEIGHT_ARGS))
        if fetch:  # a file holds its weights: it must never make gpuprune download any
            raise UserError(f"{origin}: kwargs {fetch[0]!r} would fetch weights", fix)
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
        return cls(name, data["num_classes"], data["in_channels"], float(width), kwargs)
