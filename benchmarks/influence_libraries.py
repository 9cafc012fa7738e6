"""The engine's influence step against captum's and pyDVL's on the default CNN (small_cnn on digits).

All methods score the same trained model (eval mode) on the same 1,257 training and 270 validation
samples, side by side in one run with one torch thread. Each row reports its time as a ratio to
the engine's default step (solve plus scoring, fastest of ``--repeats`` after one warm-up call).
It also reports Pearson and Spearman of its scores against the engine's, and the peak RSS that
one call adds in a fresh process.

What each library computes, mapped onto the engine's convention
``influence(x) = -g^T (H + damping*I)^-1 grad L(x)``, with g the sum of the validation loss
gradients and H the curvature of the MEAN training loss:

- pyDVL 0.10 ``CgInfluence`` returns ``+<(H + r*I)^-1 grad L(z_test), grad L(x)>`` with H the
  Hessian of the mean training loss, so ``r = damping`` and its scores are the engine's times -1.
  Its public ``influence_factors`` runs one CG solve per validation sample. The script times that
  route on ``--per-sample-val`` validation samples and scales the solves to all of them. The other
  pyDVL rows solve once for the summed gradient g, the linearity the engine uses, through the
  ``CgOperator`` of the fitted model's single block. pyDVL's ``gauss_newton`` mode is the empirical
  Fisher (mean of ``grad l grad l^T``), not the engine's ``J^T H_out J``.
- captum 0.9 ``ArnoldiInfluenceFunction`` returns ``+grad L(z_test)^T R R^T grad L(x)``, where
  ``R R^T`` inverts the top ``--projection-dim`` eigenpairs of ``H_sum + reg*I`` found by an
  Arnoldi iteration of ``--arnoldi-dim`` Hessian-vector products. H_sum is the Hessian of the
  SUMMED training loss, so ``reg = damping * n`` and its scores are the engine's times -1/n on the
  eigenvectors it keeps. It drops every other direction, where the engine's inverse is
  ``1 / damping``, so its scores are a low-rank approximation, not a solve.
  ``compute_intermediate_quantities(..., aggregate=True)`` sums the validation embeddings, which
  gives the influence on the total validation loss in one pass. captum's
  ``NaiveInfluenceFunction`` forms the dense Hessian (38,330^2 floats, 5.9 GB) and
  eigendecomposes it, which is out of reach here, so it is not run.

Both libraries' main methods use the true Hessian, so the engine also runs with
``curvature="hessian"``; that row is the like-for-like reference for their agreement.

Run from the repository root in an environment with the ``bench`` extra (benchmarks/README.md
says how to install it; about 11 minutes on 2 busy CPU cores)::

    PYTHONPATH=. ../curator-bench/bin/python benchmarks/influence_libraries.py

A library that is not installed or fails to import is reported and skipped.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from scipy import stats

from benchmarks.influence_speed import measure_epoch, timed
from core.datasets import load_dataset
from core.influence import compute_influence, cross_entropy_losses, defaults
from core.models import build_model
from core.training import TrainConfig, train


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of each timing; the fastest counts (default 3)")
    parser.add_argument("--per-sample-val", type=int, default=5,
                        help="validation samples that pyDVL's one-solve-per-sample route is timed on (default 5)")
    parser.add_argument("--arnoldi-dim", type=int, default=200,
                        help="Hessian-vector products of captum's Arnoldi iteration (captum's default 200)")
    parser.add_argument("--projection-dim", type=int, default=50,
                        help="eigenpairs captum keeps (captum's default 50)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak RSS subprocesses")
    parser.add_argument("--memory-child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------
# Measurement helpers


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_added(function, *args, **kwargs):
    """Return ``(result, MiB)``: the peak RSS during one call above the RSS before it.

    Writing 5 to ``/proc/self/clear_refs`` resets the peak (``VmHWM``) to the current RSS on Linux
    4.0 and later. Elsewhere the peak is not available and the MiB are NaN.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return function(*args, **kwargs), float("nan")
    before = _status_mib("VmRSS")
    result = function(*args, **kwargs)
    return result, _status_mib("VmHWM") - before


def memory_in_subprocess(method: str, args) -> float:
    """Return the peak RSS that one call of ``method`` adds in a fresh process, or NaN if it fails.

    A fresh process per method, because memory that one library's allocator keeps would hide the
    next one's peak.
    """
    command = [sys.executable, __file__, "--memory-child", method, "--threads", str(args.threads),
               "--arnoldi-dim", str(args.arnoldi_dim), "--projection-dim", str(args.projection_dim)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        logging.getLogger(__name__).warning("memory measurement of %s failed: %s", method, finished.stderr[-2000:])
        return float("nan")
    return json.loads(finished.stdout.strip().splitlines()[-1])["peak_added_mib"]


def agreement(candidate, reference) -> tuple:
    """Return Pearson and Spearman correlation of two score vectors."""
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return stats.pearsonr(candidate, reference)[0], stats.spearmanr(candidate, reference)[0]


def as_tensors(data) -> tuple:
    """Stack a dataset of ``(image, label)`` into one image tensor and one int64 label tensor."""
    images = torch.stack([data[index][0] for index in range(len(data))])
    labels = torch.as_tensor([int(data[index][1]) for index in range(len(data))], dtype=torch.int64)
    return images, labels


def library_version(name: str):
    """Return the installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The engine


def engine_step(model, train_data, val_data, curvature):
    """Run the engine's influence step (solve plus scoring) at the default damping and CG tolerance."""
    return compute_influence(model, cross_entropy_losses, train_data, val_data, solver="cg",
                             damping=defaults.DAMPING, curvature=curvature, **defaults.solver_options("cg"))


# ---------------------------------------------------------------------------------------------
# pyDVL


def pydvl_cg(model, tensors, rhs_norm, second_order_mode="hessian"):
    """Return pyDVL's CG influence model fitted on the training set, stopping at relative residual 1e-3.

    pyDVL 0.10 stops CG when ``||r|| < max(rtol^2 * c, atol^2)``, where ``c`` is a column norm of
    the stacked right-hand sides, not the norm of each. With ``rtol=0`` the bound is ``atol^2``,
    so ``atol = sqrt(1e-3 * rhs_norm)`` stops a right-hand side of norm ``rhs_norm`` at the
    engine's relative residual 1e-3.
    """
    from pydvl.influence.torch import CgInfluence
    from pydvl.influence.torch.util import SecondOrderMode

    # One batch contains the whole training set. pyDVL 0.10 averages the batches' products with equal
    # weights, because its point weighting reads the count of vectors, not the batch size. A
    # smaller last batch would count more than its share of the mean.
    train_images, train_labels = tensors["train"]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_images, train_labels),
                                         batch_size=len(train_labels))
    atol = float(np.sqrt(defaults.CG_TOL * rhs_norm))
    influence_model = CgInfluence(model, torch.nn.functional.cross_entropy, regularization=defaults.DAMPING,
                                  rtol=0.0, atol=atol, maxiter=defaults.CG_MAX_ITER,
                                  second_order_mode=SecondOrderMode(second_order_mode))
    return influence_model.fit(loader)


def summed_validation_gradient(model, images, labels) -> torch.Tensor:
    """Return ``g = sum_j grad L(v_j)``, flattened in ``model.parameters()`` order."""
    params = [param for param in model.parameters() if param.requires_grad]
    loss = cross_entropy_losses(model(images), labels).sum()
    return torch.cat([gradient.reshape(-1) for gradient in torch.autograd.grad(loss, params)]).detach()


def pydvl_summed_step(model, tensors, second_order_mode="hessian"):
    """Score with pyDVL: one CG solve of the summed validation gradient, then its public scoring.

    The fitted model has one block (``BlockMode.FULL``); its ``CgOperator.apply`` is the solve.
    """
    gradient = summed_validation_gradient(model, *tensors["val"])
    influence_model = pydvl_cg(model, tensors, float(gradient.norm()), second_order_mode)
    (block,) = influence_model.block_mapper.composable_block_dict.values()
    factor = block.op.apply(gradient)
    scores = influence_model.influences_from_factors(factor.reshape(1, -1), *tensors["train"])
    return -scores[0].detach()


def pydvl_per_sample_step(model, tensors, count):
    """Score through pyDVL's public route, one CG solve per sample, on the first ``count`` validation samples.

    Returns ``(scores, solve_seconds)``; the scores are summed over those samples.
    """
    images, labels = tensors["val"]
    # One absolute tolerance serves every right-hand side, so it is set from their median norm.
    norms = [float(summed_validation_gradient(model, images[index:index + 1], labels[index:index + 1]).norm())
             for index in range(count)]
    influence_model = pydvl_cg(model, tensors, float(np.median(norms)))

    started = time.perf_counter()
    factors = influence_model.influence_factors(images[:count], labels[:count])
    solve_seconds = time.perf_counter() - started

    scores = influence_model.influences_from_factors(factors, *tensors["train"]).sum(dim=0)
    return -scores.detach(), solve_seconds


# ---------------------------------------------------------------------------------------------
# captum


def captum_arnoldi_step(model, tensors, checkpoint, arnoldi_dim, projection_dim):
    """Score with captum: Arnoldi eigenpairs of the summed-loss Hessian, then summed validation embeddings."""
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

    train_images, train_labels = tensors["train"]
    val_images, val_labels = tensors["val"]
    train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_images, train_labels),
                                               batch_size=defaults.BATCH_SIZE)
    influence_model = ArnoldiInfluenceFunction(
        model, train_loader, checkpoint, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
        batch_size=defaults.BATCH_SIZE, arnoldi_dim=arnoldi_dim, projection_dim=projection_dim,
        hessian_reg=defaults.DAMPING * len(train_labels), seed=0)

    val_embedding = influence_model.compute_intermediate_quantities((val_images, val_labels), aggregate=True,
                                                                    test=True)
    train_embeddings = influence_model.compute_intermediate_quantities(train_loader)
    # captum's sign is the opposite of the engine's, and its Hessian is of the summed loss (n times ours).
    return -(train_embeddings @ val_embedding.reshape(-1)).detach() * len(train_labels)


# ---------------------------------------------------------------------------------------------
# The setting every method scores, and the methods


@dataclass
class Setting:
    """The trained default CNN (eval mode), its data as a dataset and as stacked tensors, and a checkpoint."""

    model: torch.nn.Module
    splits: object
    tensors: dict
    checkpoint: str


def build_setting(folder: str) -> Setting:
    """Train the default CNN as ``benchmarks/influence_speed.py`` does and save it for captum."""
    splits = load_dataset("digits", seed=0)
    model = build_model("small_cnn", seed=0)
    train(model, splits.train, TrainConfig(epochs=30, seed=1))
    model.eval()
    checkpoint = os.path.join(folder, "small_cnn.pt")
    torch.save(model.state_dict(), checkpoint)
    tensors = {"train": as_tensors(splits.train), "val": as_tensors(splits.val)}
    return Setting(model, splits, tensors, checkpoint)


def _engine(curvature):
    return lambda setting, args: engine_step(setting.model, setting.splits.train, setting.splits.val, curvature).scores


def _pydvl(second_order_mode):
    return lambda setting, args: pydvl_summed_step(setting.model, setting.tensors, second_order_mode)


def _captum(setting, args):
    return captum_arnoldi_step(setting.model, setting.tensors, setting.checkpoint, args.arnoldi_dim,
                               args.projection_dim)


#: Each method maps ``(setting, args)`` to scores in the engine's sign and scale, one per training sample.
METHODS = {
    "engine_gauss_newton": _engine("gauss_newton"),
    "engine_hessian": _engine("hessian"),
    "pydvl_hessian": _pydvl("hessian"),
    "pydvl_gauss_newton": _pydvl("gauss_newton"),
    "captum_arnoldi": _captum,
}


def memory_child(method: str, args) -> None:
    """Build the setting, then print the peak RSS that one call of ``method`` adds, as JSON."""
    with tempfile.TemporaryDirectory() as folder:
        setting = build_setting(folder)
        _, added = peak_rss_added(METHODS[method], setting, args)
    print(json.dumps({"method": method, "peak_added_mib": added}))


# ---------------------------------------------------------------------------------------------
# Report


class Table:
    """Rows of time, ratio to the engine's default step, agreement and added peak RSS."""

    def __init__(self, args, reference_seconds):
        self.args = args
        self.reference_seconds = reference_seconds
        print(f"\n  {'method':<48} {'seconds':>8} {'x engine':>9} {'Pearson':>8} {'Spearman':>8} "
              f"{'+RSS MiB':>9}  {'agreement against':<26} note")

    def row(self, name, seconds, scores, reference, reference_name, method=None, note=""):
        pearson, spearman = agreement(scores, reference)
        memory = "-"
        if method is not None and not self.args.skip_memory:
            memory = f"{memory_in_subprocess(method, self.args):.0f}"
        print(f"  {name:<48} {seconds:>8.1f} {seconds / self.reference_seconds:>9.2f} {pearson:>8.4f} "
              f"{spearman:>8.4f} {memory:>9}  {reference_name:<26} {note}", flush=True)


def timed_method(method, setting, args, repeats):
    """Time ``METHODS[method]`` after one untimed warm-up call; return ``(scores, fastest seconds)``."""
    METHODS[method](setting, args)
    return timed(METHODS[method], setting, args, repeats=repeats)


def run_library(label, function):
    """Call ``function``; when the library fails to import or raises, print why and go on."""
    try:
        function()
    except ImportError as error:
        print(f"  {label}: skipped, import failed ({error}); install the bench extra")
    except Exception as error:  # one library's failure must not stop the other rows
        logging.getLogger(__name__).debug("%s failed", label, exc_info=True)
        print(f"  {label}: skipped, it raised {type(error).__name__}: {error}")


def report_pydvl(table, setting, args, engine):
    scores, seconds = timed_method("pydvl_hessian", setting, args, args.repeats)
    table.row("pyDVL CgInfluence hessian, one solve of g", seconds, scores, engine["hessian"], "engine hessian",
              "pydvl_hessian", "solve through the fitted CgOperator.apply")

    scores, seconds = timed_method("pydvl_gauss_newton", setting, args, args.repeats)
    table.row("pyDVL CgInfluence gauss_newton, one solve of g", seconds, scores, engine["gauss_newton"],
              "engine gauss_newton", "pydvl_gauss_newton", "empirical Fisher, not J^T H_out J")

    # Its public route solves once per validation sample: timed on a few, extrapolated to all.
    count = min(args.per_sample_val, len(setting.splits.val))
    started = time.perf_counter()
    scores, solve_seconds = pydvl_per_sample_step(setting.model, setting.tensors, count)
    total = time.perf_counter() - started
    estimate = total + solve_seconds * (len(setting.splits.val) / count - 1)
    subset = torch.utils.data.Subset(setting.splits.val, range(count))
    subset_reference = engine_step(setting.model, setting.splits.train, subset, "hessian").scores
    table.row("pyDVL CgInfluence hessian, one solve per sample", estimate, scores, subset_reference,
              f"engine hessian, {count} val.", None,
              f"estimate: {count} solves timed, scaled to {len(setting.splits.val)}")


def report_captum(table, setting, args, engine):
    scores, seconds = timed(METHODS["captum_arnoldi"], setting, args, repeats=max(1, args.repeats - 1))
    table.row("captum ArnoldiInfluenceFunction", seconds, scores, engine["hessian"], "engine hessian",
              "captum_arnoldi", f"{args.arnoldi_dim} HVPs, top {args.projection_dim} eigenpairs")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    versions = {name: library_version(name) for name in ("captum", "pydvl")}
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} thread(s); "
          f"captum {versions['captum'] or 'not installed'}, pyDVL {versions['pydvl'] or 'not installed'}")

    with tempfile.TemporaryDirectory() as folder:
        setting = build_setting(folder)
        epoch_seconds = measure_epoch(setting.splits)
        print(f"model small_cnn ({sum(p.numel() for p in setting.model.parameters())} parameters, eval mode), "
              f"{len(setting.splits.train)} training and {len(setting.splits.val)} validation samples; "
              f"damping {defaults.DAMPING}, CG to relative residual {defaults.CG_TOL}; "
              f"one training epoch {epoch_seconds:.2f} s")

        # The engine's default (Gauss-Newton) step is the time reference. Its Hessian step is the
        # reference for agreement, because both libraries' main methods use the true Hessian.
        default_scores, default_seconds = timed_method("engine_gauss_newton", setting, args, args.repeats)
        hessian_scores, hessian_seconds = timed_method("engine_hessian", setting, args, args.repeats)
        engine = {"gauss_newton": default_scores, "hessian": hessian_scores}

        table = Table(args, default_seconds)
        table.row("engine gauss_newton (default), one solve of g", default_seconds, default_scores, hessian_scores,
                  "engine hessian", "engine_gauss_newton", "time reference")
        table.row("engine hessian, one solve of g", hessian_seconds, hessian_scores, hessian_scores,
                  "engine hessian", "engine_hessian", "agreement reference")
        for label, name, report in (("pyDVL", "pydvl", report_pydvl), ("captum", "captum", report_captum)):
            if versions[name] is None:
                print(f"  {label}: skipped, not installed; install the bench extra")
            else:
                run_library(label, lambda: report(table, setting, args, engine))


if __name__ == "__main__":
    main()
