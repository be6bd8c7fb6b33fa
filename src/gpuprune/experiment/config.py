"""The experiment config: a YAML file validated by pydantic (unknown keys and bad values refused).

Every section has defaults; a config names only what it changes. Errors become one line that
names the key, e.g. ``prune.sparsities.1: must be < 1 (got 1.5)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gpuprune.errors import UserError
from gpuprune.train import TrainConfig

Sparsity = Annotated[float, Field(gt=0, lt=1)]


def _cell_sparsities(values: list[float]) -> list[float]:
    """A grid's sparsities unchanged, or the error: empty, repeated, or two with one cell name."""
    if not values or len(set(values)) != len(values):
        raise ValueError("must be a non-empty list without duplicates")
    names: dict[str, float] = {}
    for v in values:  # cells are named method@0.5: two values must not share a name
        if (name := f"{v:g}") in names:
            raise ValueError(f"{names[name]!r} and {v!r} are the same cell ({name}); "
                             "keep one of them")  # fmt: skip
        names[name] = v
    return values


def _no_repeats(values: list[Any], what: str) -> list[Any]:
    """``values`` unchanged, or the validation error naming what repeats."""
    if len(set(values)) != len(values):
        raise ValueError(f"must not repeat {what}")
    return values


# Upper bounds: a value past these is a typo that would allocate gigabytes or run for days.
MAX_BATCH = 65536
MAX_EPOCHS = 10_000
MAX_IMAGES = 10_000_000
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    name: str = "fashion-mnist"  # fashion-mnist, cifar10, synthetic
    root: str | None = None  # local file or folder instead of the default places
    download: bool = True  # allowed to download when nothing is local
    train_subset: int | None = Field(None, ge=1, le=MAX_IMAGES)  # images kept for dense training
    test_subset: int | None = Field(None, ge=1, le=MAX_IMAGES)  # images kept for evaluation
    options: dict[str, Any] = Field(default_factory=dict)  # loader options (synthetic: size...)


class ModelSection(_Section):
    name: str = "vgg16"  # a registered model name (a config never names code to import)
    width: float = Field(1.0, gt=0, le=64)  # channel multiplier
    checkpoint: str | None = None  # dense weights (.safetensors) to load instead of training


class DistillSection(_Section):
    """Knowledge distillation from the dense model while fine-tuning (Hinton et al. 2015)."""

    alpha: float = Field(0.5, gt=0, le=1)  # weight of the soft-target term; 1 - alpha on labels
    temperature: float = Field(4.0, gt=0)


class RecipeSection(_Section):
    """Fields of :class:`gpuprune.train.TrainConfig`, plus a train subset for fine-tuning."""

    epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    lr: float = Field(0.05, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = True
    steps_per_epoch: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH)
    eval_each_epoch: bool = True  # False: evaluate after the last epoch only (same accuracy)
    amp: bool | None = None
    channels_last: bool | None = None
    train_subset: int | None = Field(None, ge=1, le=MAX_IMAGES)  # fine-tuning: train images
    distill: DistillSection | None = None  # fine-tuning: distil from the dense model

    def train_config(self, seed: int) -> TrainConfig:
        fields = self.model_dump(exclude={"train_subset", "distill"})
        if self.distill is not None:
            fields.update(distill_alpha=self.distill.alpha,
                          distill_temperature=self.distill.temperature)  # fmt: skip
        return TrainConfig(**fields, seed=seed)


class PruneSection(_Section):
    methods: list[str] = Field(default_factory=lambda: ["tile", "simd", "unstructured", "filter"])
    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.5, 0.75])
    # per method, the sparsities to run instead of `sparsities` (e.g. baselines at one only)
    sparsities_for: dict[str, list[Sparsity]] = Field(default_factory=dict)
    target: str = "nvidia"  # preset or target file: the blocks of tile/simd
    importance: str = "magnitude"
    allocation: str = "uniform"
    exclude: list[str] = Field(default_factory=list)
    exclude_first_last: bool = True
    skip_small: bool = True  # leave layers smaller than one block dense
    schedule: Literal["one-shot", "iterative", "agp"] = "one-shot"
    schedule_options: dict[str, Any] = Field(default_factory=dict)  # e.g. {steps: 3}
    ramp: float = Field(0.5, gt=0, le=1)  # agp/iterative: share of fine-tuning spent raising
    ssl_strength: float = Field(1e-4, ge=0)  # group-lasso weight for the ssl method
    ssl_fraction: float = Field(0.5, ge=0, lt=1)  # ssl: share of steps regularised before pruning
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # {nm: {m: 4}}
    reconstruct: bool = False  # re-fit kept weights to the dense layer outputs (implied by obs)
    calibration: int = Field(256, ge=1)  # train images (labels unused) for obs / reconstruct
    # reorder channels before pruning so tile/simd blocks gather important weights (the model's
    # function is unchanged; gpuprune.prune.permute); methods it does not apply to say so
    permute: bool = False

    @field_validator("sparsities")
    @classmethod
    def _sparsity_range(cls, values: list[float]) -> list[float]:
        return _cell_sparsities(values)

    @field_validator("sparsities_for")
    @classmethod
    def _each_range(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for method, values in value.items():
            try:
                _cell_sparsities(values)
            except ValueError as exc:
                raise ValueError(f"{method}: {exc}") from None
        return value

    @field_validator("methods")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if not values or len(set(values)) != len(values):
            raise ValueError("must be a non-empty list without duplicates")
        return values

    @model_validator(mode="after")
    def _overrides_named(self) -> PruneSection:
        if outside := sorted(set(self.sparsities_for) - set(self.methods)):
            raise ValueError(f"sparsities_for names {outside}, not in prune.methods "
                             "(add them to methods or drop them here)")  # fmt: skip
        return self

    def sparsities_of(self, method: str) -> list[float]:
        """The sparsities ``method`` runs at: its ``sparsities_for`` entry, else ``sparsities``."""
        return self.sparsities_for.get(method, self.sparsities)

    def grid(self) -> list[tuple[str, float]]:
        """Every (method, sparsity) cell of the grid, in config order."""
        return [(m, s) for m in self.methods for s in self.sparsities_of(m)]


class OneShotSection(_Section):
    """The dense model pruned once, without fine-tuning, per importance (its own report table).

    Every cell is uniform; ``obs`` and ``reconstruct`` use ``prune.calibration`` train images.
    """

    methods: list[str] = Field(default_factory=list)  # empty: off
    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.5, 0.75])
    importances: list[str] = Field(default_factory=lambda: ["magnitude", "obs"])
    bn_batches: int = Field(0, ge=0)  # batch-norm recalibration batches after pruning (0: off)
    # evaluate on this many test images (class-stratified, fixed; None: the whole test split)
    test_images: int | None = Field(None, ge=1)

    @field_validator("methods", "sparsities", "importances")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        return _no_repeats(values, "a value")


class LatencySection(_Section):
    backends: list[str] = Field(default_factory=lambda: ["cpu"])
    batch_size: int = Field(1, ge=1, le=4096)  # images per timed forward
    warmup: int = Field(2, ge=0, le=10_000)
    repeats: int = Field(7, ge=1, le=10_000)
    budget_s: float = Field(2.0, gt=0)  # stop repeating (after 3) past this many seconds
    # also stop once every median's 95% interval is within this fraction of it (None: never)
    ci_rel: float | None = Field(None, gt=0, lt=1)


def parse_cell(name: str) -> tuple[str, float] | None:
    """``"tile@0.75"`` -> ``("tile", 0.75)``; None unless it is method@sparsity in (0, 1)."""
    method, at, sparsity = name.partition("@")
    try:
        value = float(sparsity)
    except ValueError:
        return None
    return (method, value) if method and at and 0 < value < 1 else None


class EqualLatencySection(_Section):
    """Methods re-pruned with ``allocation: latency`` to the measured latency of a reference cell.

    The budget is the latency the model of ``backend`` gives the reference's masks (absolute ms),
    so every matched cell is as fast as the reference by the model; the report then compares
    their accuracy at the latencies actually measured.
    """

    reference: str | None = None  # "tile@0.75": a uniform cell of this config (None: off)
    methods: list[str] = Field(default_factory=list)  # re-pruned at the reference latency
    backend: str | None = None  # whose measured curves set the budget (default: first backend)
    sensitivity_batches: int = Field(4, ge=0)  # training batches per loss estimate (0: proxy)
    tolerance: float = Field(0.05, ge=0, lt=1)  # measured latencies this close count as equal

    @field_validator("reference")
    @classmethod
    def _cell_name(cls, value: str | None) -> str | None:
        if value is not None and parse_cell(value) is None:
            raise ValueError("must name a cell as method@sparsity, e.g. tile@0.75")
        return value

    @field_validator("methods")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        return _no_repeats(values, "a method")

    @property
    def reference_cell(self) -> tuple[str, float] | None:
        return None if self.reference is None else parse_cell(self.reference)


class CodesignSection(_Section):
    """Per-layer tiling search on the dense model's layers (``gpuprune codesign``), reported."""

    backend: str | None = None  # kernel backend that times the tilings (None: off)
    candidates: int = Field(8, ge=0)  # tilings sampled besides the preset
    sparsity: float = Field(0.75, ge=0, lt=1)  # share of each candidate's blocks pruned
    variant: Literal["tile", "simd", "dense"] = "tile"
    batch_size: int | None = Field(None, ge=1, le=4096)  # default: latency.batch_size
    seed: int = Field(0, ge=0, le=MAX_SEED)


class TargetsSection(_Section):
    """Accuracy goals the report checks against the measured numbers (None: not checked)."""

    dense_accuracy: float | None = Field(None, gt=0, le=1)  # e.g. 0.91
    sparsity: float | None = Field(None, gt=0, lt=1)  # where tile/simd meet unstructured/filter
    # allowed points below unstructured at that sparsity: one for both, or {tile: 2, simd: 1}
    max_gap_pt: float | dict[Literal["tile", "simd"], float] = 1.0

    @field_validator("max_gap_pt")
    @classmethod
    def _gap(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v < 0 for v in values):
            raise ValueError("must be >= 0 points")
        return value
    latency_gain_pt: float | None = None  # latency-aware tile over uniform, at equal latency
    codesign_share: float | None = Field(None, ge=0, le=1)  # layers >= 10% faster than preset
    # measured spread of accuracies across seeds and CPUs (pt): a smaller margin is "within
    # noise"; one number, or per subject: {dense: 0.7, tile: 1.8, default: 1.8}
    noise_pt: float | dict[str, float] | None = None

    @field_validator("noise_pt")
    @classmethod
    def _noise(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(not 0 <= v <= 100 for v in values):
            raise ValueError("must be between 0 and 100 points")
        return value


class DistillStudySection(_Section):
    """Grid cells fine-tuned again with the other distillation setting; the report compares.

    When ``finetune.distill`` is unset the study's cells distil with ``alpha`` and
    ``temperature``; when it is set they fine-tune without (see
    :mod:`gpuprune.experiment.distill_study`).
    """

    methods: list[str] = Field(default_factory=list)  # empty: off; each must be a grid method
    sparsity: Sparsity = 0.75  # a grid sparsity of every study method
    alpha: float = Field(0.5, gt=0, le=1)
    temperature: float = Field(4.0, gt=0)

    @field_validator("methods")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        return _no_repeats(values, "a value")


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # cells fine-tune in this many processes at once (threads shared out), then are timed one
    # at a time; not part of any result's key (like the thread count, it can change float
    # rounding, never what is computed)
    workers: int = Field(1, ge=1, le=256)
    notes: list[str] = Field(default_factory=list)  # shown in the report (e.g. what was cut)
    # a backend in latency.backends or codesign.backend that this machine cannot run (no OpenCL
    # driver, a PoCL whose compiler does not know the CPU): "error" stops before training,
    # "skip" leaves it out with a note in the run's output and report (unknown names are
    # always refused). Not part of any result's key: what is left out is, through the sections.
    unavailable_backends: Literal["error", "skip"] = "error"
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    dense: RecipeSection = RecipeSection()
    finetune: RecipeSection = RecipeSection(epochs=2, lr=0.01)
    prune: PruneSection = PruneSection()
    oneshot: OneShotSection = OneShotSection()
    distill_study: DistillStudySection = DistillStudySection()
    latency: LatencySection = LatencySection()
    equal_latency: EqualLatencySection = EqualLatencySection()
    codesign: CodesignSection = CodesignSection()
    targets: TargetsSection = TargetsSection()

    @field_validator("distill_study")
    @classmethod
    def _study_in_grid(cls, study: DistillStudySection, info: ValidationInfo
                       ) -> DistillStudySection:  # fmt: skip
        prune = info.data.get("prune")
        if not study.methods or prune is None:
            return study
        if outside := [m for m in study.methods if m not in prune.methods]:
            raise ValueError(f"{outside} not in prune.methods: the study compares grid cells "
                             "(add them there or drop them here)")
        if outside := [m for m in study.methods if study.sparsity not in prune.sparsities_of(m)]:
            raise ValueError(f"sparsity {study.sparsity:g} is not a grid sparsity of {outside} "
                             "(prune.sparsities / sparsities_for): the study compares grid cells")
        return study

    @field_validator("dense")
    @classmethod
    def _no_teacher(cls, value: RecipeSection) -> RecipeSection:
        if value.distill is not None:
            raise ValueError("distill applies to finetune only (the teacher is the dense model)")
        return value

    def digest(self, *sections: str, **extra: Any) -> str:
        """A short hash of the named sections (and ``extra`` values): what a result depends on."""
        parts = {s: _dump(getattr(self, s)) for s in sections}
        blob = json.dumps({**parts, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dump(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _one_line(err: ValidationError, source: str) -> UserError:
    first = err.errors()[0]
    # a key with a line break or other unprintable text is quoted: the error stays one line
    key = ".".join(str(p) if str(p).isprintable() and str(p) else repr(p)
                   for p in first["loc"]) or "(top level)"  # fmt: skip
    msg = " ".join(first["msg"].removeprefix("Value error, ").splitlines())
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] != "missing":
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return UserError(f"{source}: {key}: {msg}{more}", "fix that key; see configs/demo.yaml")


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; raises a one-line :class:`UserError` naming the bad key."""
    if not isinstance(data, dict):
        raise UserError(f"{source} is not a mapping of keys", "see configs/demo.yaml")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _one_line(err, source) from None


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a few lines of nested aliases can expand to 10**9 items."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases are not supported", mark)
        return super().compose_node(parent, index)


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of text; refuse anything absurd


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment config (plain YAML: no aliases, at most 1 MiB)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config {p} not found", "pass the path of a YAML file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config {p} is larger than 1 MiB", "pass the experiment's YAML config")
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError:
        raise UserError(f"config {p} is not UTF-8 text", "save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"{p}{where}: {what}", "fix the YAML (aliases are not supported)") from None
    except RecursionError:
        raise UserError(f"config {p} is nested too deeply", "fix the YAML") from None
    if data is None:  # an empty file is a mistake, not "every default" (a full-size run)
        raise UserError(f"config {p} is empty", "start from configs/demo.yaml")
    return parse_config(data, str(p))


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML with every default filled in (stored beside the results)."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
