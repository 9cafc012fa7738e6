"""Run configuration: everything that determines a run's results, stored with the run as JSON."""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from core.drop_rules import DropRule
from core.influence import defaults
from core.influence.solvers import make_solver
from core.training import TrainConfig


@dataclass
class RunConfig:
    """One two-round data dropout run.

    Round 1 trains without augmentation; round 2 retrains the same architecture from the same
    initial weights on the kept samples with ``round2_augmentation`` on.
    """

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
        if self.damping < 0:
            raise ValueError(f"damping {self.damping} must be >= 0")
        if self.influence_dtype not in ("float32", "float64"):
            raise ValueError(f"influence_dtype must be float32 or float64, got {self.influence_dtype!r}")
        DropRule.from_dict(self.drop_rule)
        if self.solver != "paper":
            make_solver(self.solver, **self.all_solver_options())

    def train_config(self, round_number: int) -> TrainConfig:
        """Return the training settings of round 1 or 2 (they differ only in augmentation)."""
        augmentation = self.round1_augmentation if round_number == 1 else self.round2_augmentation
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           weight_decay=self.weight_decay, milestones=list(self.milestones),
                           augmentation=augmentation, seed=self.seed + round_number)

    def all_solver_options(self) -> dict:
        return {**defaults.solver_options(self.solver), **self.solver_options}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run settings {unknown}; valid settings are {sorted(known)}")
        return cls(**data)
