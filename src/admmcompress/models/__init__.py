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
    model_input_shape,
    register_model,
)
from .weights import MASK_PREFIX, load_weights_file, read_state_dict

__all__ = [
    "CIFAR_SHAPE",
    "IMAGENET_SHAPE",
    "MASK_PREFIX",
    "MNIST_SHAPE",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "ResNetCifar",
    "VGGCifar",
    "architecture_args",
    "available_models",
    "create_model",
    "load_weights_file",
    "model_input_shape",
    "read_state_dict",
    "register_model",
]
