"""Models from anywhere: a registered name, ``timm:``, ``torchvision:``, ``hf:``, or an import
path ``package.module:factory``.

A config names its model in one of these forms and every command rebuilds it the same way.
Registered names include those a package declares under the ``admmcompress.models`` entry
point, so a user's own names work in every process without a driver script. An import
path runs code, so a model *file* that names one is never rebuilt from it silently: the
caller passes the model (``load(path, model=...)``) or opts in (``allow_import=True``,
``--allow-import``). A config is the user's own and may name one freely.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

#: ``package.module:attribute`` (dots and identifiers only)
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w.]*$")
PREFIXES = ("timm:", "torchvision:", "hf:")


class ModelSourceError(ValueError):
    """A model name that names nothing buildable, or arguments the model does not take."""


def kind_of(name: str) -> str:
    """ "registered", "timm", "torchvision", "hf" or "import" (an import path)."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1]
    if IMPORT_PATH.match(name):
        return "import"
    return "registered"


def runs_code(name: str) -> bool:
    """Whether building ``name`` imports a module chosen by the name itself."""
    return kind_of(name) == "import"


def _import_factory(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSourceError(f"model {path!r}: cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSourceError(f"model {path!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSourceError(f"model {path!r}: {attr} is not callable")
    return obj


def _timm(name: str, args: Mapping[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelSourceError(
            f"model 'timm:{name}' needs timm: pip install 'admmcompress[timm]'"
        ) from None
    if name not in timm.list_models():
        raise ModelSourceError(f"timm has no model {name!r} (timm.list_models() lists them)")
    if args.get("pretrained"):
        raise ModelSourceError(
            "timm models are built with pretrained=False (nothing is downloaded); start "
            "from trained weights with 'init:' or args: {weights: PATH}"
        )
    return timm.create_model(name, pretrained=False, **args)


def _torchvision(name: str, args: Mapping[str, Any]) -> nn.Module:
    import torchvision.models

    if name not in torchvision.models.list_models():
        raise ModelSourceError(
            f"torchvision has no model {name!r} (torchvision.models.list_models() lists them)"
        )
    if args.get("weights") is not None:
        raise ModelSourceError("torchvision weights are never downloaded; use 'init:' instead")
    return torchvision.models.get_model(name, weights=None, **args)


def hf_config(source: str) -> dict[str, Any]:
    """The config of ``hf:SOURCE``: a folder holding config.json, or the json file itself."""
    path = Path(source).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelSourceError(
            f"model 'hf:{source}': no {file} (give a local folder with config.json, or the "
            "config file; nothing is downloaded)"
        )
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ModelSourceError(f"model 'hf:{source}': {file} is not valid JSON: {e}") from None


def _hf(source: str, args: Mapping[str, Any]) -> nn.Module:
    """A Hugging Face model from its config (random init), with ``auto_class`` (default
    AutoModel) and optionally ``config`` (the config itself, as a file records it), or with
    ``pretrained: true`` the weights of the local folder (nothing is downloaded)."""
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(
            "hf: models need transformers: pip install 'admmcompress[hf]'"
        ) from None
    args = dict(args)
    auto = args.pop("auto_class", "AutoModel")
    cls = getattr(transformers, auto, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelSourceError(f"transformers has no auto class {auto!r}")
    pretrained = bool(args.pop("pretrained", False))
    config_dict = args.pop("config", None) or hf_config(source)
    if args:
        raise ModelSourceError(
            f"hf: models take auto_class, config and pretrained, not {', '.join(sorted(args))}"
        )
    if pretrained:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ModelSourceError(f"model 'hf:{source}': pretrained needs a local folder")
        return cls.from_pretrained(str(folder), local_files_only=True)
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise ModelSourceError(f"model 'hf:{source}': its config has no model_type")
    config = transformers.AutoConfig.for_model(**config_dict)
    return cls.from_config(config)


def check_arguments(factory: Callable[..., nn.Module], name: str, args: Mapping[str, Any]) -> None:
    """Refuse arguments the factory does not take, naming the ones it does."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in args if k not in takes]
    if unknown:
        raise ModelSourceError(
            f"model {name!r} does not take {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(takes) or 'no arguments'}"
        )
    try:
        sig.bind(**args)
    except TypeError as e:
        raise ModelSourceError(f"model {name!r}: {e}") from None


def recorded_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a model file records so that it rebuilds the architecture anywhere:
    an ``hf:`` model carries its whole config (not the folder's path); weights are never
    recorded (the file holds them)."""
    out = {k: v for k, v in args.items() if k not in ("weights", "pretrained")}
    if kind_of(name) == "hf" and "config" not in out:
        out["config"] = hf_config(name[len("hf:") :])
    return out


def build(
    name: str, args: Mapping[str, Any], registered: Callable[[str], Callable[..., nn.Module]]
) -> nn.Module:
    """Build ``name`` with ``args``; ``registered`` looks a registered name up."""
    kind = kind_of(name)
    if kind == "timm":
        return _timm(name[len("timm:") :], args)
    if kind == "torchvision":
        return _torchvision(name[len("torchvision:") :], args)
    if kind == "hf":
        return _hf(name[len("hf:") :], args)
    factory = _import_factory(name) if kind == "import" else registered(name)
    check_arguments(factory, name, args)
    try:
        return factory(**args)
    except (TypeError, ValueError) as e:
        raise ModelSourceError(f"model {name!r} with {dict(args)} cannot be built: {e}") from None
