"""The run configuration: a YAML file validated by pydantic, with errors a newcomer can act on.

The schema is nested by phase (pretrain, admm, retrain) and keeps per-layer ``rules`` open
for growth: a rule says how a layer is pruned today and will say how it is quantized next.
"""

from __future__ import annotations

import re
import types
import typing
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Union

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

from ..data import DataError, available_datasets, dataset_entry
from ..models import available_models, is_known_model
from .rules import QuantizeConfig, RuleConfig


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: the largest rho and rho growth a config may ask for: beyond them the penalty overflows
#: float32 within a few updates, and no run needs them
MAX_RHO = 1e6
MAX_RHO_GROWTH = 100.0
#: torch's generators take 64-bit seeds; a run adds small offsets to the config's seed
MAX_SEED = 2**62
#: more threads than this only makes torch slower, whatever the machine
MAX_THREADS = 1024
#: run names become folder names under runs/
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class OptimizerConfig(_Strict):
    """Which torch optimizer trains a phase."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(_Strict):
    """Learning-rate schedule over a phase's epochs (stepped once per epoch)."""

    name: Literal["constant", "cosine", "step", "multistep"] = "constant"
    step_size: int = Field(10, ge=1, description="epochs between decays for 'step'")
    milestones: list[int] = Field(default_factory=list, description="epochs for 'multistep'")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor for step/multistep")
    min_lr: float = Field(0.0, ge=0, description="final lr for 'cosine'")


class DistillConfig(_Strict):
    """Knowledge distillation: also match the dense model's softened outputs.

    A heavily pruned network underfits; the dense model's full output distribution carries
    more signal per image than the label alone.
    """

    weight: float = Field(0.5, gt=0, le=1, description="share of the distillation term")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of both models")
    teacher: str | None = Field(
        None,
        description="a saved model to learn from instead (model.safetensors or .admmz; any "
        "architecture with the same outputs); default: the model as it was before step 1",
    )


class PhaseConfig(_Strict):
    """A training phase: how many epochs and with which optimizer and schedule."""

    epochs: int = Field(0, ge=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    distill: DistillConfig | None = Field(
        None,
        description="learn from a teacher's outputs too (by default the model as it was before "
        "the first step, after pretraining or init); not for pretraining",
    )


class RetrainConfig(PhaseConfig):
    """Masked retraining after hardening; for quantized layers also how they stay on the grid."""

    epochs: int = Field(10, ge=0)
    quant_method: Literal["ste", "freeze"] = Field(
        "ste",
        description="ste: straight-through estimator on full-precision shadow weights; "
        "freeze: ADMM-NN style snap-and-freeze in rounds",
    )
    freeze_fractions: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 0.875, 0.9375],
        description="freeze: share of each layer's weights snapped by each round",
    )

    @field_validator("freeze_fractions")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v) or any(b <= a for a, b in pairwise(v)):
            raise ValueError("must be a non-empty increasing list of fractions in (0, 1]")
        return v


class AdmmConfig(PhaseConfig):
    """The ADMM phase: W-steps of ``period`` epochs, each followed by the Z- and U-step."""

    epochs: int = Field(
        40, ge=0, description="0 skips ADMM: the step prunes by magnitude (projection) at once"
    )
    period: int = Field(4, ge=1, description="epochs per ADMM iteration")
    rho: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        1e-3,
        description="initial penalty, or auto: each layer's rho adapts to balance its "
        "residuals (starting at 1e-3, growing by rho_growth too, capped by rho_max, "
        "default 10)",
    )
    rho_growth: float = Field(
        1.3, ge=1, le=MAX_RHO_GROWTH, description="rho is multiplied by this every period"
    )
    rho_max: float | None = Field(None, gt=0, le=MAX_RHO)
    rescale_dual: bool = True
    restart_schedule: bool = Field(
        True, description="restart the lr schedule every period, as the authors' code does"
    )
    recalibrate_bn: int = Field(
        100,
        ge=0,
        description="after hardening, recompute BatchNorm running statistics over this many "
        "training batches (no gradient step), since the projection changes what each "
        "BatchNorm sees; 0 turns it off. Models without BatchNorm are not affected",
    )

    @field_validator("rho", mode="before")
    @classmethod
    def _number_or_auto(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, str):  # YAML reads 1e-2 (no dot) as text
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"must be a number greater than 0, or auto; got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"must be a number greater than 0, or auto; got {v!r}")
        if not v <= MAX_RHO:
            raise ValueError(
                f"must be at most {MAX_RHO:g} (a penalty that large pins the weights to their "
                f"sets from the first step), got {v!r}"
            )
        return float(v)

    @model_validator(mode="after")
    def _period_fits(self) -> AdmmConfig:
        if self.rho_max is not None and self.rho != "auto" and self.rho_max < self.rho:
            raise ValueError(f"rho_max ({self.rho_max}) must be >= rho ({self.rho})")
        if self.epochs and self.period > self.epochs:
            raise ValueError(
                f"period ({self.period}) is longer than epochs ({self.epochs}): "
                "no ADMM update would ever run"
            )
        return self


class TargetConfig(_Strict):
    """An overall pruning rate that the tool splits over layers, so no layer is hand-tuned."""

    rate: float = Field(
        description="pruning rate to reach over all pruned layers: weights / non-zeros, > 1"
    )
    layers: list[str] = Field(
        default_factory=lambda: ["*"],
        description="selectors of the layers the target splits over (default: every conv/fc)",
    )
    allocation: Literal["sensitivity", "global_magnitude", "lamp", "uniform"] = Field(
        "sensitivity",
        description="sensitivity: equal loss increase per layer, from a per-layer magnitude "
        "pruning scan; global_magnitude: the largest weights over all layers; lamp: the "
        "largest weights relative to their own layer's (LAMP, Lee et al. 2021), which never "
        "starves a layer of small weights; uniform: the same ratio in every layer",
    )
    min_count: int = Field(
        8, ge=1, description="no layer keeps fewer weights than this (avoids cutting a layer)"
    )
    samples: int = Field(
        5000, ge=100, description="training images used to measure the sensitivity scan"
    )
    quantize: QuantizeConfig | None = Field(
        None, description="also quantize the target's layers (same forms as in a rule)"
    )

    @field_validator("rate")
    @classmethod
    def _above_one(cls, v: float) -> float:
        if not v > 1.0:
            raise ValueError(f"rate must be above 1 (300 keeps one weight in 300), got {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one layer selector, e.g. ['*'] or ['type:Linear']")
        return v


def _check_rules(rules: Any) -> Any:
    if isinstance(rules, dict):
        for key, rule in rules.items():
            if not isinstance(rule, (dict, RuleConfig)):
                raise ValueError(
                    f"rules.{key}: a rule must be a mapping such as "
                    f"'{{prune: irregular, keep: 0.1}}', got {rule!r}"
                )
    return rules


class StepConfig(_Strict):
    """One step of a progressive run: ADMM towards this step's sets, harden, retrain.

    A step starts from the previous step's retrained model. Weights pruned earlier stay
    zero, and a layer keeps its last rule until a later step gives it a new one.
    """

    name: str | None = Field(None, description="label in reports (default: step1, step2, ...)")
    admm: AdmmConfig = Field(default_factory=AdmmConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    rules: dict[str, RuleConfig] = Field(default_factory=dict)
    target: TargetConfig | None = None

    _rules_are_mappings = field_validator("rules", mode="before")(_check_rules)

    @model_validator(mode="after")
    def _something_to_do(self) -> StepConfig:
        if not self.rules and self.target is None:
            raise ValueError(
                "a step needs 'rules' (e.g. 'fc1: {prune: irregular, keep: 0.1}'), a "
                "'target' (e.g. 'target: {rate: 100}'), or both"
            )
        return self


class ModelConfig(_Strict):
    name: str = Field(
        description="a registered model (built in, or declared by an installed package), "
        "timm:NAME, torchvision:NAME, hf:FOLDER (a Hugging Face config or model folder), or "
        "an import path package.module:factory"
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if not is_known_model(v):
            raise ValueError(
                f"unknown model {v!r}; registered: {', '.join(available_models())}; or name "
                "one as timm:NAME, torchvision:NAME, hf:FOLDER or package.module:factory"
            )
        return v


class AugmentConfig(_Strict):
    """Training-time augmentation (never applied to evaluation)."""

    shift: int = Field(
        0, ge=0, le=8, description="shift images by up to this many pixels (pad + random crop)"
    )
    hflip: bool = Field(False, description="mirror images left-right at random (not for digits)")
    pad: Literal["edge", "black"] = Field(
        "edge",
        description="what a shift brings in at the border: copies of the edge pixels, or "
        "black (pixel value 0, the zero padding of torchvision's RandomCrop(padding=...), the "
        "standard CIFAR-10 augmentation)",
    )
    crop_scale: tuple[float, float] | None = Field(
        None,
        description="image folders only: random resized crops cover this range of the "
        "image's area (default [0.08, 1.0], the standard ImageNet augmentation)",
    )

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {v}")
        return v


#: DataConfig fields that are options of the data set's own loader (``data.registry``)
LOADER_OPTIONS = ("verify", "download", "workers", "image_size", "eval_resize")


class DataConfig(_Strict):
    dataset: str = Field(
        "mnist",
        description="a registered data set: mnist, fashion_mnist, cifar10 (held in memory), "
        "imagenet or image_folder (ROOT/train/<class>/* and ROOT/val/<class>/*, decoded from "
        "disk batch by batch), or one you register",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    root: str | None = Field(
        None, description="data folder; --data-dir and $ADMMCOMPRESS_DATA take precedence"
    )
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(
        256,
        ge=1,
        description="batch size for test evaluation; on a CPU, 256 runs LeNet-5's test set "
        "1.5x faster than 1000 (the activations stay in cache)",
    )
    train_subset: int | None = Field(None, ge=1, description="train on a random subset")
    test_subset: int | None = Field(None, ge=1, description="evaluate on a random subset")
    verify: bool = Field(True, description="check the files' md5 checksums")
    download: bool = Field(False, description="download missing files (needs a network)")
    workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="image folders: decoding processes (default 4, fewer on smaller machines)",
    )
    image_size: int | None = Field(
        None, ge=8, le=4096, description="image folders: side of the square crops (default 224)"
    )
    eval_resize: int | None = Field(
        None,
        ge=8,
        le=4096,
        description="image folders: short side before the evaluation centre crop "
        "(default image_size / 0.875: 256 for 224)",
    )

    @field_validator("dataset")
    @classmethod
    def _registered(cls, v: str) -> str:
        return dataset_entry(v).name  # the error lists the registered data sets

    def _given_options(self) -> dict[str, Any]:
        """Loader options set away from their defaults (``augment.crop_scale`` included)."""
        given = {
            name: getattr(self, name)
            for name in LOADER_OPTIONS
            if getattr(self, name) != DataConfig.model_fields[name].default
        }
        if self.augment.crop_scale is not None:
            given["crop_scale"] = self.augment.crop_scale
        return given

    def loader_options(self) -> dict[str, Any]:
        """The options the data set's loader reads, as given (absent: its default)."""
        names = dataset_entry(self.dataset).option_names()
        return {k: v for k, v in self._given_options().items() if k in names}

    @model_validator(mode="after")
    def _fits_the_dataset(self) -> DataConfig:
        entry = dataset_entry(self.dataset)
        names = entry.option_names()
        # verify: false where nothing has checksums asks for nothing, so it passes
        wrong = [n for n in self._given_options() if n not in names and n != "verify"]
        if wrong:
            shown = ", ".join("augment.crop_scale" if n == "crop_scale" else n for n in wrong)
            takers = [
                d
                for d in available_datasets()
                if set(wrong) <= set(dataset_entry(d).option_names())
            ]
            raise ValueError(
                f"{shown} only appl{'y' if len(wrong) > 1 else 'ies'} to "
                f"{', '.join(takers) or 'no registered data set'}, not to {self.dataset} "
                f"(which takes {', '.join(names)})"
            )
        on = {
            "shift": self.augment.shift != 0,
            "hflip": self.augment.hflip,
            "pad": self.augment.pad != "edge",
        }
        unsupported = [
            f"augment.{k}" for k, used in on.items() if used and k not in entry.augmentations
        ]
        if unsupported:
            hint = (
                " (it crops at random already, see augment.crop_scale)"
                if "crop_scale" in names
                else ""
            )
            raise ValueError(
                f"{', '.join(unsupported)} cannot be used with {self.dataset}, whose training "
                f"batches support {', '.join(sorted(entry.augmentations)) or 'no augmentation'}"
                + hint
            )
        try:
            entry.make_options(**self.loader_options())
        except DataError as e:
            raise ValueError(str(e)) from None
        return self


class RuntimeConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, description="CPU threads for torch")
    deterministic: bool = Field(True, description="bit-reproducible runs and resumes")
    progress: bool = Field(True, description="show progress bars")
    flush_denormal: bool = Field(
        True,
        description="treat denormal floats as zero on CPU: ADMM drives many weights and "
        "optimizer moments towards zero, and denormal arithmetic can slow an epoch 5x",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward passes under bfloat16 autocast (weights, gradients, ADMM "
        "state and projections stay fp32); about 2x faster on recent GPUs and on CPUs with "
        "AVX512-BF16 or AMX, slower than fp32 on CPUs without them. auto: bf16 where the "
        "device computes it in hardware, else fp32 (a resumed run keeps the precision it "
        "started with)",
    )
    channels_last: bool = Field(
        False, description="NHWC memory layout for conv models: faster convolutions on GPUs"
    )


class RunConfig(_Strict):
    """A whole run: pretrain (optional), then one or more steps of ADMM -> harden -> retrain.

    A one-step run gives ``rules`` (and/or ``target``) at the top level. A progressive run
    lists ``steps``; the top-level ``admm`` and ``retrain`` are then defaults that each step's
    own settings override key by key.
    """

    name: str = Field(
        "run",
        max_length=200,
        description="run name (letters, digits, . _ -): the default output folder is runs/<name>",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    init: str | None = Field(
        None, description="start from these weights (model.safetensors or a state dict)"
    )
    pretrain: PhaseConfig = Field(default_factory=PhaseConfig)
    admm: AdmmConfig = Field(default_factory=AdmmConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    steps: list[StepConfig] | None = None  # before rules: the rules check looks at it
    rules: dict[str, RuleConfig] = Field(default_factory=dict)
    target: TargetConfig | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.match(NAME_PATTERN, v):
            raise ValueError(
                "must be letters, digits, '.', '_' or '-', not starting with '.' or '-' (it "
                f"names the output folder runs/<name>), got {v!r}"
            )
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    _rules_are_mappings = field_validator("rules", mode="before")(_check_rules)

    @field_validator("rules")
    @classmethod
    def _some_rules(cls, v: dict[str, RuleConfig], info: ValidationInfo) -> dict[str, RuleConfig]:
        # runs only for an explicit 'rules:'; a dumped progressive config has 'rules: {}'
        if not v and not info.data.get("steps"):
            raise ValueError(
                "at least one layer rule is needed, e.g. 'fc1: {prune: irregular, keep: 0.1}'"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _step_defaults(cls, raw: Any) -> Any:
        """Fill each step's admm/retrain from the top-level ones (a step's keys win)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
            return raw
        raw = dict(raw)
        steps = []
        for step in raw["steps"]:
            if isinstance(step, dict):
                step = dict(step)
                for phase in ("admm", "retrain"):
                    base, own = raw.get(phase), step.get(phase)
                    if isinstance(base, dict) and (own is None or isinstance(own, dict)):
                        step[phase] = _deep_merge(base, own or {})
            steps.append(step)
        raw["steps"] = steps
        return raw

    @model_validator(mode="after")
    def _rules_or_steps(self) -> RunConfig:
        if self.pretrain.distill is not None:
            raise ValueError(
                "pretrain.distill: pretraining has no teacher; distill in the admm or retrain "
                "phases (the teacher is the pretrained model)"
            )
        if self.steps is not None:
            if self.rules or self.target is not None:
                raise ValueError(
                    "with 'steps', give the rules and targets inside each step, not at the "
                    "top level"
                )
            if not self.steps:
                raise ValueError("'steps' is empty; list at least one step or drop the key")
        elif not self.rules and self.target is None:
            raise ValueError(
                "at least one layer rule is needed, e.g. 'rules: {fc1: {prune: irregular, "
                "keep: 0.1}}', or a target such as 'target: {rate: 100}'"
            )
        return self

    def step_list(self) -> list[StepConfig]:
        """The run's steps, a one-step run included, each with its name filled in."""
        if self.steps is None:
            steps = [
                StepConfig(
                    admm=self.admm, retrain=self.retrain, rules=self.rules, target=self.target
                )
            ]
        else:
            steps = [s.model_copy() for s in self.steps]
        for i, step in enumerate(steps):
            if step.name is None:
                step.name = f"step{i + 1}"
        return steps


def _deep_merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- loading -----------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override (``key.path=value``) and validate a YAML config."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{where} is not valid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping of keys (model:, rules:, ...), not {type(raw).__name__}"
        )
    if isinstance(raw.get("model"), str):  # expand the shorthand so model.name can be set
        raw["model"] = {"name": raw["model"]}
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the raw mapping; the value is parsed as YAML (``0.1``, ``true``).

    Layer names may contain dots (``features.0``): at each level the longest run of path
    parts that names an existing key wins.
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. admm.rho=0.01")
    key, _, value_text = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    node: Any = raw
    i = 0
    while True:
        if isinstance(node, list):  # steps.0.admm.rho: a list is indexed from 0
            try:
                index = int(parts[i])
                node[index]
            except (ValueError, IndexError):
                where = ".".join(parts[:i])
                raise ConfigError(
                    f"--set {item!r}: {where} is a list of {len(node)}; "
                    f"index it with 0..{len(node) - 1}, e.g. {where}.0"
                ) from None
            if i + 1 == len(parts):
                node[index] = value
                return
            if not isinstance(node[index], dict):
                raise ConfigError(f"--set {item!r}: {where}.{index} is not a section")
            node, i = node[index], i + 1
            continue
        for j in range(len(parts), i, -1):
            candidate = ".".join(parts[i:j])
            if candidate in node:
                break
        else:
            j, candidate = i + 1, parts[i]
        if j == len(parts):
            node[candidate] = value
            return
        child = node.get(candidate)
        if child is None:
            if parts[j].isdigit():  # steps.0.x where the config has no steps
                raise ConfigError(
                    f"--set {item!r}: this config has no {'.'.join(parts[:j])!r} list"
                    + (
                        " (it is a one-step run: set the step's keys at the top level, e.g. "
                        f"{'.'.join(parts[j + 1 :])}=...)"
                        if parts[:j] == ["steps"]
                        else ""
                    )
                )
            child = node[candidate] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:j])} is a value, not a section")
        node, i = child, j


def _unwrap(annotation: Any) -> Any:
    """The BaseModel class (or dict value type) behind Optional[...] / dict[str, ...]."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _unwrap(arg)
    return annotation


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    node: Any = RunConfig
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return None
            node = field.annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return None
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  - {path}: unknown key{hint}")
            continue
        if e["type"] == "missing":
            lines.append(f"  - {path}: required key is missing")
            continue
        param = getattr(e.get("ctx", {}).get("error"), "param", None)
        if param is not None:  # a constraint names the parameter it refuses
            path = f"{path}.{param}" if loc else param
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = e.get("input")
        plain = e["type"] == "value_error" or isinstance(got, dict) or got is None
        shown = "" if plain else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
