"""Ten-crop evaluation (Krizhevsky et al., 2012), the ImageNet test protocol of the ResNet-18/34 recipe.

Each test image is decoded larger than the training crop: scaled so its shorter side is 256, then
centre-cropped to 256x256. The four corner crops, the centre crop and their mirror images, each
224x224, go through the network, and the ten softmax outputs are averaged.

TODO: the pipeline still reports single centre-crop test error; recording ten-crop error needs
``curator.pipeline`` to call ``ten_crop_predict`` on ``splits.test.resized(...)`` for file-backed
ImageNet runs.
"""

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from core.datasets.base import iterate_batches


@torch.no_grad()
def ten_crop_predict(model: nn.Module, data, crop: int, batch_size: int = 64,
                     device: Optional[torch.device] = None) -> tuple:
    """Return ``(losses, predictions)`` per sample of ``data`` from ten ``crop`` x ``crop`` views.

    ``data`` yields images larger than ``crop`` (for example ``FileSplit.resized((256, 256), 256)``).
    The loss is the cross-entropy of the averaged probabilities. The model's train/eval mode is
    restored afterwards.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, predictions = [], []
    for inputs, targets, _ in iterate_batches(data, batch_size):
        if min(inputs.shape[-2:]) < crop:
            raise ValueError(f"ten-crop evaluation needs images of at least {crop}x{crop}, got "
                             f"{tuple(inputs.shape[-2:])}; decode the test split larger (e.g. 256)")
        views = torch.cat(TF.ten_crop(inputs.to(device), [crop, crop]))
        probabilities = F.softmax(model(views).float(), dim=1).view(10, len(targets), -1).mean(dim=0)
        targets = targets.to(device)
        losses.append(F.nll_loss(probabilities.clamp_min(1e-12).log(), targets, reduction="none").cpu())
        predictions.append(probabilities.argmax(1).cpu())
    model.train(was_training)
    return torch.cat(losses).numpy(), torch.cat(predictions).numpy().astype(np.int64)
