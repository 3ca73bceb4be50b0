"""Models by name: the registry (``create_model``) and the architectures shipped with it.

One module per family of architectures (``mnist``, ``cifar``, ``imagenet``); each registers
its factories, and the registry imports them on its first lookup.
"""

from .cifar import BasicBlock, ResNetCifar, VGGCifar
from .mnist import LeNet5, LeNet300
from .registry import (
    CIFAR_SHAPE,
    IMAGENET_SHAPE,
    MNIST_SHAPE,
    architecture_args,
    available_models,
    create_model,
    is_known_model,
    model_input_shape,
    register_model,
)
from .sources import ModelSourceError, recorded_args, runs_code
from .weights import MASK_PREFIX, load_weights_file, read_state_dict

__all__ = [
    "CIFAR_SHAPE",
    "IMAGENET_SHAPE",
    "MASK_PREFIX",
    "MNIST_SHAPE",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "ModelSourceError",
    "ResNetCifar",
    "VGGCifar",
    "architecture_args",
    "available_models",
    "create_model",
    "is_known_model",
    "load_weights_file",
    "model_input_shape",
    "read_state_dict",
    "recorded_args",
    "register_model",
    "runs_code",
]
