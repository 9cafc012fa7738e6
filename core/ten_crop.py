"""Ten-crop evaluation (Krizhevsky et al., 2012), the ImageNet test protocol of the ResNet-18/34 recipe.

Each test image is decoded larger than the training crop: scaled so its shorter side is 256, then
centre-cropped to 256x256. The four corner crops, the centre crop and their mirror images, each
224x224, go through the network, and the ten softmax outputs are averaged.

``ten_crop_test_split`` decodes a run's test images for it: the shorter side scaled to the
dataset's ``resize`` option and a square centre crop of that side (256 in the ResNet-18/34 recipe),
from which crops of the training size (224) are taken. Only datasets read from image files can be
decoded again at another size.
"""

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from core.datasets.base import DatasetSplits, iterate_batches


@torch.no_grad()
def ten_crop_predict(model: nn.Module, data, crop, batch_size: int = 64,
                     device: Optional[torch.device] = None) -> tuple:
    """Return ``(losses, predictions)`` per sample of ``data`` from ten views of size ``crop``.

    ``crop`` is a side length or ``(height, width)``.

    ``data`` yields images larger than ``crop`` (for example ``FileSplit.resized((256, 256), 256)``).
    The loss is the cross-entropy of the averaged probabilities. The model's train/eval mode is
    restored afterwards.
    """
    crop = (crop, crop) if isinstance(crop, int) else tuple(int(side) for side in crop)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, predictions = [], []
    for inputs, targets, _ in iterate_batches(data, batch_size):
        if inputs.shape[-2] < crop[0] or inputs.shape[-1] < crop[1]:
            raise ValueError(f"ten-crop evaluation needs images of at least {crop[0]}x{crop[1]}, got "
                             f"{tuple(inputs.shape[-2:])}; decode the test split larger (e.g. 256)")
        views = torch.cat(TF.ten_crop(inputs.to(device), list(crop)))
        probabilities = F.softmax(model(views).float(), dim=1).view(10, len(targets), -1).mean(dim=0)
        targets = targets.to(device)
        losses.append(F.nll_loss(probabilities.clamp_min(1e-12).log(), targets, reduction="none").cpu())
        predictions.append(probabilities.argmax(1).cpu())
    model.train(was_training)
    return torch.cat(losses).numpy(), torch.cat(predictions).numpy().astype(np.int64)


def ten_crop_test_split(splits: DatasetSplits):
    """Return the test split decoded at ``resize`` x ``resize`` for ``ten_crop_predict`` (crops of the training size).

    Raises ``ValueError`` naming the fix when the dataset is not read from image files, or when
    its ``resize`` option is missing or not larger than the training size.
    """
    files = splits.test_files
    if files is None:
        raise ValueError(f"ten-crop evaluation needs a dataset read from image files (imagefolder or csv), "
                         f"got {splits.name!r}; set test crops to 1 (--test-crops 1)")
    size, resize = tuple(files.spec.size), files.spec.resize
    if resize is None or resize <= max(size):
        raise ValueError(f"ten-crop evaluation needs the dataset option resize larger than image_size {list(size)}, "
                         f"got resize {resize}; set resize (256 for 224 crops) or set test crops to 1 (--test-crops 1)")
    return files.resized((resize, resize), resize)
