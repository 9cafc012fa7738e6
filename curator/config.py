"""Run configuration: everything that determines a run's results, stored with the run as JSON."""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from core import denoising
from core.datasets.denoising import SOURCES as DENOISE_SOURCES
from core.drop_rules import DropRule
from core.influence import defaults
from core.influence.solvers import make_solver
from core.presets import preset_settings
from core.training import TrainConfig


@dataclass
class RunConfig:
    """One two-round data dropout run.

    Round 1 trains without augmentation; round 2 retrains the same architecture from the same
    initial weights on the kept samples with ``round2_augmentation`` on. ``from_preset`` fills
    the settings from one of the paper's recipes.
    """

    #: One of ``TASKS``: "classification", or "denoise" (DnCNN on noisy patches, see ``core.denoising``).
    task: str = "classification"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    model: str = "small_cnn"
    seed: int = 0
    label_noise: float = 0.0
    noise_pairs: Optional[list] = None
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    milestones: list = field(default_factory=list)
    round1_augmentation: str = "none"
    round2_augmentation: str = "translate1"
    #: Test-time views: 1 (the image as trained) or 10 (``core.ten_crop``: corners, centre and mirrors of
    #: the image decoded at ``dataset_options["resize"]``; image-file datasets only).
    test_crops: int = 1
    #: Name of the ``core.presets`` recipe these settings started from (informational; the values are stored).
    preset: Optional[str] = None
    #: Stratified, seeded subset size of the training split; None keeps all of it.
    max_train_samples: Optional[int] = None
    #: Loader keyword options, e.g. ``{"image_size": 224, "resize": 256}`` or ``{"whiten": "zca"}``.
    dataset_options: dict = field(default_factory=dict)
    #: Builder keyword options of both rounds, e.g. ``{"dropout": 0.2}``; ``round2_model_options`` overrides round 2's.
    model_options: dict = field(default_factory=dict)
    round2_model_options: dict = field(default_factory=dict)
    momentum: float = 0.9
    #: "multistep" (``milestones``) or "plateau" (divide by 10 after ``plateau_patience`` epochs without a
    #: lower validation error).
    lr_schedule: str = "multistep"
    plateau_patience: int = 3
    solver: str = defaults.SOLVER
    curvature: str = defaults.CURVATURE
    damping: float = defaults.DAMPING
    params: str = "all"
    solver_options: dict = field(default_factory=dict)
    influence_dtype: str = "float32"
    score_chunk: int = 4096
    drop_rule: dict = field(default_factory=lambda: DropRule().to_dict())
    device: str = "auto"

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label noise {self.label_noise} must be in [0, 1)")
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping {self.damping} must be a finite number >= 0, e.g. 0.1")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"learning rate must be > 0 and at most {MAX_LR:g}, got {self.lr}; "
                             f"typical values are 1e-4 to 0.1")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.test_crops not in (1, 10):
            raise ValueError(f"test_crops must be 1 or 10, got {self.test_crops}")
        if self.influence_dtype not in ("float32", "float64"):
            raise ValueError(f"influence_dtype must be float32 or float64, got {self.influence_dtype!r}")
        DropRule.from_dict(self.drop_rule)
        if self.noise_pairs:
            self.noise_pairs = [list(pair) for pair in parse_noise_pairs(self.noise_pairs)]
            if self.label_noise == 0:
                raise ValueError(f"noise pairs {self.noise_pairs} flip labels only with a label noise rate above "
                                 f"0; add --label-noise, e.g. 0.1, or leave out --noise-pairs")
        if self.max_train_samples is not None and self.max_train_samples < 2:
            raise ValueError(f"max_train_samples must be at least 2, and at least one per class, got {self.max_train_samples}")
        if self.lr_schedule not in ("multistep", "plateau"):
            raise ValueError(f"lr_schedule must be 'multistep' or 'plateau', got {self.lr_schedule!r}")
        if self.solver != "paper":
            make_solver(self.solver, **self.all_solver_options())
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.task == "denoise":
            _check_denoise(self)

    def train_config(self, round_number: int) -> TrainConfig:
        """Return the training settings of round 1 or 2 (they differ only in augmentation)."""
        augmentation = self.round1_augmentation if round_number == 1 else self.round2_augmentation
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, milestones=list(self.milestones),
                           augmentation=augmentation, seed=self.seed + round_number, schedule=self.lr_schedule,
                           patience=self.plateau_patience)

    def round_model_options(self, round_number: int) -> dict:
        """Return the model builder options of round 1 or 2 (round 2 may change dropout, for instance)."""
        if round_number == 2:
            return {**self.model_options, **self.round2_model_options}
        return dict(self.model_options)

    @classmethod
    def for_task(cls, task: str, **overrides) -> "RunConfig":
        """Return the default settings of ``task``, ``overrides`` on top.

        Classification starts from the field defaults, denoising from preset ``DENOISE_PRESET``.
        """
        if task == "denoise":
            return cls.from_preset(DENOISE_PRESET, **overrides)
        return cls(**overrides, task=task)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RunConfig":
        """Build a config from ``core.presets`` preset ``name``, with ``overrides`` taking precedence."""
        return cls(**preset_settings(name, {**overrides, "preset": name}))

    def all_solver_options(self) -> dict:
        return {**defaults.solver_options(self.solver), **self.solver_options}

    def with_absolute_paths(self) -> "RunConfig":
        """Return a copy whose ``data_dir`` and ``*_dir`` dataset options are absolute paths.

        A stored run is resumed, verified and shown from other working folders (the app runs from
        the repository root), so a path is resolved once, against the folder it was typed in.
        """
        def absolute(path):
            return os.path.abspath(os.path.expanduser(path)) if isinstance(path, str) and path else path

        options = {key: absolute(value) if key.endswith("_dir") else value
                   for key, value in self.dataset_options.items()}
        return dataclasses.replace(self, data_dir=absolute(self.data_dir), dataset_options=options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run settings {unknown}; valid settings are {sorted(known)}")
        return cls(**data)


#: The largest learning rate a run accepts: far above any useful value, and far below float32 overflow.
MAX_LR = 1e3
TASKS = ("classification", "denoise")
#: The preset a denoising run starts from unless another is chosen: the paper's recipe, CPU-sized.
DENOISE_PRESET = "dncnn-denoise-cpu"


def _check_denoise(config: RunConfig) -> None:
    """Raise ``ValueError`` naming the setting when ``config`` cannot run as a denoising task."""
    denoising.DenoiseOptions.from_dict(config.dataset_options)
    if config.dataset not in DENOISE_SOURCES:
        raise ValueError(f"the denoise task reads images from {DENOISE_SOURCES}, got dataset {config.dataset!r}; "
                         f"use 'skimage' (embedded) or give --data-dir")
    if config.model != "dncnn":
        raise ValueError(f"the denoise task trains the 'dncnn' model, got {config.model!r}")
    for name in ("round1_augmentation", "round2_augmentation"):
        if getattr(config, name) not in denoising.AUGMENTATIONS:
            raise ValueError(f"{name} {getattr(config, name)!r} is not a denoising augmentation; choose one of "
                             f"{denoising.AUGMENTATIONS}")
    if config.label_noise or config.max_train_samples is not None or config.lr_schedule != "multistep":
        raise ValueError("the denoise task has no labels to flip, no training subset and only the multistep "
                         "schedule; leave label_noise 0, max_train_samples unset and lr_schedule 'multistep'")


def parse_noise_pairs(pairs) -> list:
    """Parse class pairs for label noise, "3:5,7:1" or ``[[3, 5], [7, 1]]``, into ``[(3, 5), (7, 1)]``.

    A pair ``(a, b)`` flips samples of class ``a`` to class ``b``. Class indices are checked against
    the dataset when it is loaded.
    """
    if isinstance(pairs, str):
        items = [item.strip() for item in pairs.split(",") if item.strip()]
        try:
            parsed = [tuple(int(part) for part in item.split(":")) for item in items]
        except ValueError:
            raise ValueError(f"noise pairs {pairs!r} must look like '3:5,7:1' (class:class, comma-separated)") from None
    else:
        parsed = [tuple(int(part) for part in pair) for pair in pairs]
    for pair in parsed:
        if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
            raise ValueError(f"noise pair {pair} in {pairs!r} must be two different class indices >= 0, "
                             f"such as 3:5 (class 3 flipped to 5)")
    sources = [a for a, _ in parsed]
    if len(set(sources)) != len(sources):
        raise ValueError(f"noise pairs {pairs!r} flip one class to two targets; give each source class once")
    return parsed
