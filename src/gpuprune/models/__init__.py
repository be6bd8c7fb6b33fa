"""CNN architectures for the experiments: CIFAR-style VGG16 and ResNet, plus user factories.

``create_model("vgg16", num_classes=10, in_channels=1, width=0.25)`` builds a model by name;
``create_model("mypkg.nets:build")`` imports a user factory; ``create_model("timm:resnet18",
kwargs={"num_classes": 10})`` builds a timm (or ``torchvision:``) model. ``MODELS`` is the
registry, so users can add their own with ``@MODELS.register("name")``.
"""

from gpuprune.models.factory import MODEL_SOURCES, MODELS, ModelSpec, create_model, list_models
from gpuprune.models.resnet import CifarResNet, resnet20
from gpuprune.models.tiny import TinyCNN, tiny_cnn
from gpuprune.models.vgg import VGG, vgg16

__all__ = [
    "MODELS",
    "MODEL_SOURCES",
    "ModelSpec",
    "VGG",
    "CifarResNet",
    "TinyCNN",
    "create_model",
    "list_models",
    "resnet20",
    "tiny_cnn",
    "vgg16",
]
