"""Distributed runs on this CPU: gloo ranks on 127.0.0.1 must give the single-process results.

The collectives are checked in ``torch.multiprocessing`` workers against sums computed in one
process; the pipeline is checked through real ``torchrun`` subprocesses of ``curator``.
"""

import fcntl
import os
import socket
import subprocess
import types
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core import distributed
from core.influence import InfluenceProblem, cross_entropy_losses
from curator import queries, runs
from curator.config import RunConfig
from curator.pipeline import RunContext, create_run, run_stages
from curator.store import Store
from curator.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(port: int) -> dict:
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"})
    return env


def torchrun(arguments: list, ranks: int = 2, timeout: float = 240) -> str:
    """Run ``curator ARGUMENTS`` under torchrun with ``ranks`` gloo processes; return its output."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "curator", *arguments]
    done = subprocess.run(command, cwd=ROOT, env=rank_environment(port), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


# --- collectives, in spawned workers ------------------------------------------------------------

def tiny_problem_data():
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(37, 5, generator=generator)
    targets = torch.randint(0, 3, (37,), generator=generator)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    vector = torch.randn(sum(p.numel() for p in model.parameters()), generator=generator)
    return model, torch.utils.data.TensorDataset(inputs, targets), vector


def collective_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"})
    distributed.setup("gloo")
    try:
        model, data, vector = tiny_problem_data()
        problem = InfluenceProblem(model, cross_entropy_losses, data, batch_size=8, across_ranks=True)
        gradient = problem.loss_gradient_sum(data)
        product = problem.curvature_product(vector)
        shard = distributed.shard_positions(len(data))
        owner = distributed.main_only(lambda: distributed.rank())
        try:
            distributed.main_only(lambda: 1 / 0)
            failure = ""
        except ZeroDivisionError:
            failure = "ZeroDivisionError"
        except distributed.RankFailedError as error:
            failure = f"RankFailedError: {error}"
        torch.save({"gradient": gradient, "product": product, "shard": shard, "owner": owner,
                    "failure": failure, "num_train": problem.num_train}, Path(folder) / f"rank-{rank}.pt")
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def collective_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    # Spawned workers re-run the parent's __main__ file. After an AppTest in the same pytest process
    # that file can be a page script, so the workers get an empty __main__ instead.
    saved_main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        mp.start_processes(collective_worker, args=(2, free_port(), str(folder)), nprocs=2, start_method="spawn")
    finally:
        sys.modules["__main__"] = saved_main
    return [torch.load(folder / f"rank-{rank}.pt", weights_only=False) for rank in range(2)]


def test_sums_over_ranks_match_one_process(collective_results):
    model, data, vector = tiny_problem_data()
    # Independent of the problem's batching: autograd over the whole set at once.
    parameters = list(model.parameters())
    loss = torch.nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1], reduction="sum")
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, parameters)])
    one_process = InfluenceProblem(model, cross_entropy_losses, data, batch_size=37).curvature_product(vector)

    for result in collective_results:
        assert result["num_train"] == 37
        torch.testing.assert_close(result["gradient"], gradient, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result["product"], one_process, rtol=1e-5, atol=1e-6)


def test_shards_cover_data_once(collective_results):
    shards = [result["shard"] for result in collective_results]

    assert np.concatenate(shards).tolist() == list(range(37))
    assert [len(shard) for shard in shards] == [18, 19]


def test_main_only_shares_result_and_failure(collective_results):
    assert [result["owner"] for result in collective_results] == [0, 0]
    assert collective_results[0]["failure"] == "ZeroDivisionError"
    assert collective_results[1]["failure"].startswith("RankFailedError: rank 0 failed")
    assert "ZeroDivisionError" in collective_results[1]["failure"]


def test_helpers_single_process_defaults():
    tensor = torch.arange(3.0)

    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_sum(tensor) is tensor
    assert tensor.tolist() == [0.0, 1.0, 2.0]
    assert distributed.main_only(lambda: "value") == "value"
    assert distributed.shard_positions(5).tolist() == [0, 1, 2, 3, 4]


# --- the pipeline under torchrun --------------------------------------------------------------

#: float64 makes summation order nearly irrelevant, and a fixed CG iteration count makes both
#: solves run the same number of products, so one process and two ranks must agree closely.
#: Influence over the last layer keeps the solve to a few seconds on 2 cores.
CONFIG = dict(epochs=2, influence_dtype="float64", solver_options={"max_iter": 4, "tol": 1e-30},
              score_chunk=300, device="cpu", params="classifier.3")


@pytest.fixture(scope="module")
def scored_once(tmp_path_factory):
    """A round-1 run scored in this process: ``(workspace, store, run_id, scores, directions)``."""
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    store = Store(workspace)
    run_id = create_run(workspace, store, RunConfig(**CONFIG))
    run_stages(workspace, store, run_id, ("round1", "score", "rule"))
    scores = queries.samples(store, workspace, run_id)
    directions = torch.load(workspace.run_dir(run_id) / "directions.pt", weights_only=True)
    return workspace, store, run_id, scores, directions


def test_two_ranks_score_like_one_process(scored_once):
    workspace, store, run_id, scores, directions = scored_once
    before = (workspace.run_dir(run_id) / "directions.pt").stat().st_mtime_ns

    output = torchrun(["score", "--workspace", str(workspace.root), "--run-id", run_id, "--quiet"])
    rescored = queries.samples(store, workspace, run_id)
    redone = torch.load(workspace.run_dir(run_id) / "directions.pt", weights_only=True)
    chunks = sorted(path.name for path in workspace.scores_dir(run_id).glob("*.parquet"))

    assert "rank 0 of 2 joined the gloo process group" in output
    assert (workspace.run_dir(run_id) / "directions.pt").stat().st_mtime_ns > before
    assert chunks == [f"chunk-{number:05d}.parquet" for number in range(5)]
    assert rescored["index"].tolist() == list(range(1257))
    for half in ("a", "b"):
        torch.testing.assert_close(redone[half], directions[half], rtol=1e-9, atol=1e-12)
    for column in ("influence_a", "influence_b", "influence", "loss"):
        np.testing.assert_allclose(rescored[column], scores[column], rtol=1e-8, atol=1e-10)
    assert runs.get_run(store, run_id)["status"] == "scored"


def test_scores_match_per_sample_gradients(scored_once):
    workspace, store, run_id, scores, directions = scored_once
    ctx = RunContext(workspace, store, run_id)
    model = ctx.load_model("round1.pt").double().eval()
    last_layer = [model.classifier[3].weight, model.classifier[3].bias]
    direction = (directions["a"] + directions["b"]).double()
    for index in (0, 311, 1256):
        image, label = ctx.splits.train[index]
        loss = torch.nn.functional.cross_entropy(model(image[None].double()), torch.tensor([int(label)]))
        gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, last_layer)])
        expected = -float(direction @ gradient)
        assert scores.loc[scores["index"] == index, "influence"].item() == pytest.approx(expected, rel=1e-6,
                                                                                           abs=1e-9)


def test_two_ranks_train_like_one_process(scored_once):
    workspace, store, one_run, _, _ = scored_once
    run_id = create_run(workspace, store, RunConfig(**CONFIG))

    torchrun(["job", "--workspace", str(workspace.root), "--run-id", run_id, "--stages", "round1"])
    metrics = queries.metrics(store, run_id)
    one_metrics = queries.metrics(store, one_run)
    history = queries.history(store, run_id)
    one_history = queries.history(store, one_run)

    assert sorted(metrics["split"]) == ["test", "validation"]
    assert history["epoch"].tolist() == [1, 2]
    test_error = metrics.loc[metrics["split"] == "test", "error"].item()
    one_error = one_metrics.loc[(one_metrics["split"] == "test") & (one_metrics["round"] == 1), "error"].item()
    assert abs(test_error - one_error) <= 0.03
    # Same samples per step and the same mean-loss gradient; only BatchNorm's per-rank statistics differ.
    np.testing.assert_allclose(history["loss"], one_history["loss"], rtol=0.15)
    assert (workspace.run_dir(run_id) / "round1.pt").exists()
    assert not (workspace.run_dir(run_id) / "round1.ckpt.tmp").exists()


def test_locked_run_stops_every_rank(scored_once):
    workspace, store, _, _, _ = scored_once
    run_id = create_run(workspace, store, RunConfig(**CONFIG))
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "curator", "job", "--workspace", str(workspace.root),
               "--run-id", run_id, "--stages", "round1"]
    with open(workspace.run_dir(run_id) / "job.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(command, cwd=ROOT, env=rank_environment(port), capture_output=True, text=True,
                              timeout=180)

    assert done.returncode != 0
    # Rank 1 reports rank 0's failure instead of waiting for a job that never starts.
    assert f"rank 0 failed, so rank 1 stops too: JobLockedError: run {run_id} is already being worked on" in done.stderr
    assert not (workspace.run_dir(run_id) / "round1.pt").exists()
