"""Weight initialisation, one function per scheme, shared by the model families."""

from torch import nn


def init_msra(model: nn.Module) -> None:
    """Initialise ``model`` as He et al. (2015) do for ReLU networks (MSRA).

    Convolutions get normal weights with std ``sqrt(2 / fan_out)``; BatchNorm starts as the
    identity; linear layers keep PyTorch's default weights with a zero bias. Used by the ResNet and
    DenseNet families.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def init_xavier(model: nn.Module) -> None:
    """Initialise every convolution and linear layer with Glorot-uniform weights and zero biases.

    Used by All-CNN-C, which has no normalisation layers.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
