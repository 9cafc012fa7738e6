"""Leave-one-out verification: sample choice, paired retraining, agreement with theory, the store and the CLI."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.datasets import load_dataset
from core.influence import cross_entropy_losses, influence_scores
from core.verify import RetrainSettings, choose_samples, paired_retrain, verify_influence
from curator import jobs, verify
from curator.cli import main
from curator.config import RunConfig
from curator.pipeline import create_run, run_stages
from curator.store import Store
from curator.workspace import Workspace
from streamlit.testing.v1 import AppTest
from influence_reference import fit_softmax_regression, logreg_with, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_choose_samples_groups():
    scores = np.random.default_rng(0).permutation(np.arange(100.0))

    indices, groups = choose_samples(scores, k=5, seed=1)

    assert groups == ["unfavorable"] * 5 + ["favorable"] * 5 + ["random"] * 5
    assert sorted(scores[indices[:5]]) == [95, 96, 97, 98, 99]
    assert sorted(scores[indices[5:10]]) == [0, 1, 2, 3, 4]
    assert len(set(indices.tolist())) == 15
    assert all(5 <= scores[i] <= 94 for i in indices[10:])


def test_choose_samples_small_sets():
    indices, groups = choose_samples(np.arange(7.0), k=10)

    assert len(indices) == 6
    assert groups.count("random") == 2
    with pytest.raises(ValueError, match="k must be at least 1"):
        choose_samples(np.arange(7.0), k=0)


def test_paired_retrain_is_deterministic(digits):
    subset = digits.train.subset(np.arange(200))
    start = logreg_with(torch.zeros(650, dtype=torch.float64)).float()
    settings = RetrainSettings(epochs=2, lr=0.05, optimizer="sgd", batch_size=32)

    first = paired_retrain(start, subset, settings, left_out=7)
    second = paired_retrain(start, subset, settings, left_out=7)
    full = paired_retrain(start, subset, settings)

    assert torch.equal(first.linear.weight, second.linear.weight)
    assert not torch.equal(first.linear.weight, full.linear.weight)
    assert torch.count_nonzero(start.linear.weight) == 0


def test_left_out_sample_full_batch_equals_subset_training(digits):
    # With one batch per epoch, masking sample 7 is plain full-batch training on the other samples.
    subset = digits.train.subset(np.arange(100))
    start = logreg_with(torch.zeros(650, dtype=torch.float64)).float()
    settings = RetrainSettings(epochs=5, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0, batch_size=100)

    retrained = paired_retrain(start, subset, settings, left_out=7)

    keep = np.delete(np.arange(100), 7)
    weight = torch.zeros(10, 64, requires_grad=True)
    bias = torch.zeros(10, requires_grad=True)
    inputs, targets = subset.images[keep].flatten(1), torch.from_numpy(subset.labels[keep])
    for _ in range(5):
        loss = F.cross_entropy(F.linear(inputs, weight, bias), targets)
        grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight -= 0.1 * grad_weight
            bias -= 0.1 * grad_bias
    torch.testing.assert_close(retrained.linear.weight, weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(retrained.linear.bias, bias.detach(), rtol=1e-5, atol=1e-6)


def test_warm_verification_agrees_with_exact_influence(digits):
    # Softmax regression at the optimum of mean loss + 0.01/2 ||theta||^2, retrained by full-batch
    # gradient descent with weight decay 0.01 (the same objective) until it converges again.
    subset = digits.train.subset(np.arange(400))
    theta = fit_softmax_regression(subset.images.flatten(1).double(), torch.from_numpy(subset.labels), 10, l2=0.01)
    model = logreg_with(theta)
    scores = influence_scores(model, cross_entropy_losses, subset, digits.val, solver="exact", damping=0.01,
                              curvature="hessian")
    settings = RetrainSettings(epochs=100, lr=1.0, optimizer="sgd", momentum=0.9, weight_decay=0.01, batch_size=400)

    result = verify_influence(model, subset, digits.val, scores.numpy(), k=4, mode="warm", settings=settings)

    assert len(result["points"]) == 12
    assert result["noise_floor"] < 1e-6
    assert result["pearson"] > 0.95
    assert result["spearman"] > 0.8
    unfavorable = [p["actual"] for p in result["points"] if p["group"] == "unfavorable"]
    favorable = [p["actual"] for p in result["points"] if p["group"] == "favorable"]
    assert max(unfavorable) < 0 < min(favorable)


def test_verify_influence_rejects_bad_input(digits):
    model = logreg_with(torch.zeros(650, dtype=torch.float64))

    with pytest.raises(ValueError, match="unknown verification mode"):
        verify_influence(model, digits.train, digits.val, np.zeros(len(digits.train)), mode="cold")
    with pytest.raises(ValueError, match="scores for 1257 training samples"):
        verify_influence(model, digits.train, digits.val, np.zeros(10))


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    store = Store(workspace)
    run_id = create_run(workspace, store, RunConfig(model="logreg", epochs=2, damping=0.1))
    run_stages(workspace, store, run_id, ("round1", "score"))
    return workspace, store, run_id


def test_run_verification_stored_and_read_back(scored_run):
    workspace, store, run_id = scored_run
    events = []

    result = verify.run_verification(workspace, store, run_id, k=2, mode="warm", epochs=1,
                                     progress=lambda *event: events.append(event))
    frame = verify.latest_verification(store, run_id)

    assert list(frame.columns) == verify.POINT_COLUMNS
    assert len(frame) == 6
    assert frame.attrs["verification_id"] == result["verification_id"]
    assert frame.attrs["mode"] == "warm"
    assert frame.attrs["settings"]["epochs"] == 1
    assert frame["sample_id"].str.startswith("digits-").all()
    np.testing.assert_allclose(frame["predicted"], -frame["influence"] / 1257, rtol=1e-12)
    assert events[-1][:3] == ("verify", 8, 8)
    assert len(verify.list_verifications(store, run_id)) >= 1
    figure = verify.verification_figure(frame)
    assert {trace.name for trace in figure.data} == {"unfavorable", "favorable", "random"}


def test_scratch_verification_and_mode_filter(scored_run):
    workspace, store, run_id = scored_run

    verify.run_verification(workspace, store, run_id, k=1, mode="scratch", epochs=1)

    assert verify.latest_verification(store, run_id).attrs["mode"] == "scratch"
    assert len(verify.latest_verification(store, run_id, mode="scratch")) == 3


def test_latest_verification_empty_for_new_run(scored_run):
    _, store, _ = scored_run

    frame = verify.latest_verification(store, "no-such-run")

    assert frame.empty
    assert list(frame.columns) == verify.POINT_COLUMNS


def test_run_verification_without_scores_raises(tmp_path):
    workspace = Workspace(tmp_path)
    store = Store(workspace)
    run_id = create_run(workspace, store, RunConfig(model="logreg", epochs=1))

    with pytest.raises(LookupError, match="has no influence scores yet"):
        verify.run_verification(workspace, store, run_id, k=1)


def test_cli_verify_prints_correlations(scored_run, capsys):
    workspace, _, run_id = scored_run

    code = main(["verify", "--workspace", str(workspace.root), "--run", run_id, "--k", "1", "--epochs", "1",
                 "--quiet"])

    assert code == 0
    assert "Pearson" in capsys.readouterr().out


def test_review_panel_runs_check_and_shows_result(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "workspace")
    store = Store(workspace)
    run_id = create_run(workspace, store, RunConfig(model="logreg", epochs=2, damping=0.1))
    run_stages(workspace, store, run_id, ("round1", "score"))
    monkeypatch.setenv("CURATOR_WORKSPACE", str(workspace.root))
    app = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "run_app.py"), default_timeout=180).run()
    app.switch_page("pages/review.py").run()

    app.number_input(key=f"verify_k_{run_id}").set_value(2).run()
    app.button(key=f"verify_start_{run_id}").click().run()
    deadline = time.monotonic() + 300
    while jobs.verification_running(workspace, run_id) and time.monotonic() < deadline:
        time.sleep(1)
    app.run()
    stored = verify.latest_verification(store, run_id)
    captions = "\n".join(element.value for element in app.caption)

    assert not app.exception, [element.value for element in app.exception]
    assert len(stored) == 3 * 2
    assert stored.attrs["k"] == 2
    assert "Mode warm, K = 2" in captions


@pytest.mark.parametrize("option, message", [
    (["--epochs", "0"], "retraining needs at least 1 epoch, got 0"),
    (["--lr", "-1"], "retraining learning rate must be a finite number > 0, got -1.0"),
])
def test_cli_verify_rejects_bad_retraining(scored_run, capsys, option, message):
    workspace, store, run_id = scored_run
    before = len(verify.latest_verification(store, run_id))

    code = main(["verify", "--workspace", str(workspace.root), "--run", run_id, "--k", "2", *option])

    assert code == 2
    assert message in capsys.readouterr().err
    assert len(verify.latest_verification(store, run_id)) == before


def test_cli_verify_without_round1_named(scored_run, capsys):
    workspace, store, run_id = scored_run
    model = workspace.run_dir(run_id) / "round1.pt"
    moved = model.with_name("round1.pt.aside")
    model.rename(moved)
    try:
        code = main(["verify", "--workspace", str(workspace.root), "--run", run_id, "--k", "1", "--quiet"])
    finally:
        moved.rename(model)

    err = capsys.readouterr().err
    assert code == 2
    assert f"run {run_id} has no round1.pt to retrain from" in err
    assert "finish round 1 first" in err
