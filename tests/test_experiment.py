"""The experiment runner on tiny settings, with every statistic recomputed by hand from stored rows.

One module-scoped experiment (logistic regression, 2 epochs, 2 seeds, 20% label noise) is run for
real: round 1, influence scoring, the drop rule and every arm's training. The tests then read its
stored per-arm rows and per-sample ranking file and recompute the summary's numbers with plain
arithmetic, independently of ``curator.statistics``.
"""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from core.drop_rules import DropRule
from core.models import build_model
from core.training import train
from curator import experiment, experiment_summary, queries, runs, statistics
from curator.cli import main
from curator.config import RunConfig, parse_noise_pairs
from curator.pipeline import load_splits
from curator.store import Store
from curator.workspace import Workspace

SEEDS = [0, 1]
#: Student t 0.975 quantile with 1 degree of freedom (tables: 12.706).
T_975_DF1 = 12.706204736174707
EXTRA_RULES = {"top5": DropRule("top_fraction", 0.05).to_dict()}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("experiment"))
    store = Store(workspace)
    run = RunConfig(model="logreg", epochs=2, label_noise=0.2, max_train_samples=300).to_dict()
    config = experiment.ExperimentConfig(seeds=SEEDS, run=run, extra_rules=EXTRA_RULES)
    experiment_id = experiment.create_experiment(store, config, "exp-test")
    experiment.run_experiment(workspace, store, experiment_id)
    summary = experiment_summary.experiment_summary(store, experiment_id)
    return {"workspace": workspace, "store": store, "id": experiment_id, "summary": summary,
            "rows": experiment_summary.arm_rows(store, experiment_id)}


def _errors(rows, arm, split="test"):
    selected = rows[(rows["arm"] == arm) & (rows["split"] == split)].sort_values("seed")
    return selected["error"].tolist()


def _hand_mean(values):
    return sum(values) / len(values)


def _hand_std(values):
    mean = _hand_mean(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def test_every_arm_and_split_is_stored(stored):
    rows = stored["rows"]
    arms = list(experiment.ARMS) + ["rule_top5"]

    assert sorted(set(rows["arm"])) == sorted(arms)
    assert len(rows) == len(SEEDS) * len(arms) * 2
    assert set(rows["split"]) == {"test", "validation"}
    assert stored["summary"]["seeds_complete"] == SEEDS


def test_arm_mean_and_std_match_hand_values(stored):
    for arm, values in stored["summary"]["arms"].items():
        for split in ("test", "validation"):
            errors = _errors(stored["rows"], arm, split)

            assert values[f"{split}_error"]["mean"] == pytest.approx(_hand_mean(errors))
            assert values[f"{split}_error"]["std"] == pytest.approx(_hand_std(errors))


def test_round1_arm_copies_run_metrics(stored):
    store = stored["store"]
    for seed in SEEDS:
        metrics = queries.metrics(store, experiment.run_id_for(stored["id"], seed))
        round1 = metrics[(metrics["round"] == 1) & (metrics["split"] == "test")]["error"].iloc[0]
        rows = stored["rows"]
        stored_error = rows[(rows["arm"] == "round1") & (rows["split"] == "test") & (rows["seed"] == seed)]["error"]

        assert stored_error.iloc[0] == pytest.approx(round1)


def test_paired_differences_match_hand_values(stored):
    rows = stored["rows"]
    for arm, references in stored["summary"]["paired_test_error"].items():
        for name, paired in references.items():
            reference = name.removeprefix("vs_")
            differences = [a - b for a, b in zip(_errors(rows, arm), _errors(rows, reference))]
            mean, std = _hand_mean(differences), _hand_std(differences)
            half_width = T_975_DF1 * std / math.sqrt(2)

            assert paired["values"] == pytest.approx(differences)
            assert paired["mean"] == pytest.approx(mean)
            assert paired["low"] == pytest.approx(mean - half_width)
            assert paired["high"] == pytest.approx(mean + half_width)
            assert paired["lower"] == sum(d < 0 for d in differences)
            assert paired["higher"] == sum(d > 0 for d in differences)


def test_per_class_change_matches_hand_values(stored):
    rows = stored["rows"]
    test = rows[rows["split"] == "test"]
    for arm, changes in stored["summary"]["per_class_test_error_change_vs_round1"].items():
        for change in changes:
            label = change["class"]
            deltas = []
            for seed in SEEDS:
                after = json.loads(test[(test["arm"] == arm) & (test["seed"] == seed)]["per_class"].iloc[0])
                before = json.loads(test[(test["arm"] == "round1") & (test["seed"] == seed)]["per_class"].iloc[0])
                deltas.append(after[label]["error"] - before[label]["error"])

            assert change["change"] == pytest.approx(_hand_mean(deltas))


def _samples(stored, seed):
    run_id = experiment.run_id_for(stored["id"], seed)
    return queries.samples(stored["store"], stored["workspace"], run_id).sort_values("index")


def _mask(rows, seed, arm):
    path = rows[(rows["arm"] == arm) & (rows["seed"] == seed) & (rows["split"] == "test")]["drop_path"].iloc[0]
    return pd.read_parquet(path).sort_values("index")["dropped"].to_numpy()


def test_drop_sets_follow_their_definitions(stored):
    rows = stored["rows"]
    for seed in SEEDS:
        samples = _samples(stored, seed)
        dropout = (samples["decision"] == "drop").to_numpy()
        k = int(dropout.sum())
        by_loss = np.argsort(-samples["loss"].to_numpy(), kind="stable")[:k]

        assert k > 0
        assert (_mask(rows, seed, "dropout") == dropout).all()
        assert (_mask(rows, seed, "paper") == (samples["influence"] > 0).to_numpy()).all()
        assert _mask(rows, seed, "random").sum() == k
        assert sorted(np.flatnonzero(_mask(rows, seed, "high_loss"))) == sorted(by_loss)
        assert not _mask(rows, seed, "full").any()


def test_arm_trains_on_the_kept_samples(stored):
    rows = stored["rows"]
    test = rows[rows["split"] == "test"]
    for row in test.itertuples():
        assert row.n_train + row.n_dropped == len(_samples(stored, row.seed))


def test_flipped_dropped_counts_flipped_in_drop_set(stored):
    rows = stored["rows"]
    for seed in SEEDS:
        samples = _samples(stored, seed)
        flipped = (samples["true_label"] != samples["label"]).to_numpy()
        for arm in ("dropout", "paper", "random", "high_loss"):
            stored_count = rows[(rows["arm"] == arm) & (rows["seed"] == seed)]["n_flipped_dropped"].iloc[0]

            assert stored_count == int((_mask(rows, seed, arm) & flipped).sum())


def _rankings(stored, seed):
    run_id = experiment.run_id_for(stored["id"], seed)
    return pd.read_parquet(stored["workspace"].run_dir(run_id) / "rankings.parquet").sort_values("index")


def _hand_auroc(flipped, scores):
    """Share of (flipped, clean) pairs ranked the right way round, ties counting one half."""
    positives, negatives = scores[flipped], scores[~flipped]
    wins = sum((p > negatives).sum() + 0.5 * (p == negatives).sum() for p in positives)
    return wins / (len(positives) * len(negatives))


def _hand_curve(flipped, scores):
    """Inspected and found shares after each group of tied scores, read from the highest."""
    order = np.argsort(-scores, kind="stable")
    inspected, found = [0.0], [0.0]
    seen = hits = 0
    for position, index in enumerate(order):
        seen += 1
        hits += int(flipped[index])
        last_of_tie = position + 1 == len(order) or scores[order[position + 1]] != scores[index]
        if last_of_tie:
            inspected.append(seen / len(scores))
            found.append(hits / flipped.sum())
    return inspected, found


def test_detection_metrics_match_hand_values(stored):
    stored_rows = experiment_summary.ranking_rows(stored["store"], stored["id"])
    for seed in SEEDS:
        frame = _rankings(stored, seed)
        flipped = frame["flipped"].to_numpy()
        for ranking in ("influence", "self_influence", "training_loss", "random"):
            scores = frame[f"suspicion_{ranking}"].to_numpy()
            flagged = frame[f"flagged_{ranking}"].to_numpy()
            row = stored_rows[(stored_rows["seed"] == seed) & (stored_rows["ranking"] == ranking)].iloc[0]
            top = np.argsort(-scores, kind="stable")[:flipped.sum()]
            inspected, found = _hand_curve(flipped, scores)
            curve = json.loads(row["curve"])

            assert row["auroc"] == pytest.approx(_hand_auroc(flipped, scores))
            assert row["precision"] == pytest.approx((flipped & flagged).sum() / flagged.sum())
            assert row["recall"] == pytest.approx((flipped & flagged).sum() / flipped.sum())
            assert row["precision_at_flipped"] == pytest.approx(flipped[top].mean())
            assert curve["inspected"] == pytest.approx(inspected)
            assert curve["found"] == pytest.approx(found)


def test_cleanlab_arm_matches_cleanlab(stored):
    rank = pytest.importorskip("cleanlab.rank")
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    for seed in SEEDS:
        run_id = experiment.run_id_for(stored["id"], seed)
        config = RunConfig.from_dict(runs.get_run(stored["store"], run_id)["config"])
        splits = load_splits(config)
        labels = splits.train.labels
        # The documented folds: 4, stratified by the given label, shuffled with the seed. Each
        # fold's network starts from the seed's initial weights and trains with round 1's settings.
        probabilities = np.zeros((len(labels), 10))
        for trained_on, held_out in StratifiedKFold(4, shuffle=True, random_state=seed).split(labels, labels):
            model = build_model("logreg", num_classes=10, in_channels=1, image_size=(8, 8), seed=seed)
            train(model, splits.train, config.train_config(1), indices=trained_on)
            model.eval()
            with torch.no_grad():
                probabilities[held_out] = torch.softmax(model(splits.train.images[held_out]), 1).double().numpy()
        frame = _rankings(stored, seed)

        assert frame["suspicion_cleanlab"].to_numpy() == pytest.approx(
            1 - rank.get_label_quality_scores(labels, probabilities), abs=1e-6)
        assert (frame["flagged_cleanlab"].to_numpy() == cleanlab_filter.find_label_issues(labels, probabilities)).all()


def test_cleanlab_folds_validated():
    with pytest.raises(ValueError, match="cleanlab folds 1 must be 0 .* or between 2 and 20"):
        experiment.ExperimentConfig(seeds=[0], cleanlab_folds=1)


def test_influence_is_flagged_by_the_rule_drop_set(stored):
    rows = stored["rows"]
    for seed in SEEDS:
        frame = _rankings(stored, seed)

        assert (frame["flagged_influence"].to_numpy() == _mask(rows, seed, "dropout")).all()


def test_other_rankings_flag_as_many_as_the_drop_set(stored):
    for seed in SEEDS:
        frame = _rankings(stored, seed)
        k = frame["flagged_influence"].sum()

        for ranking in ("self_influence", "training_loss", "random"):
            assert frame[f"flagged_{ranking}"].sum() == k


def test_detection_summary_averages_seeds(stored):
    stored_rows = experiment_summary.ranking_rows(stored["store"], stored["id"])
    for ranking, values in stored["summary"]["detection"].items():
        rows = stored_rows[stored_rows["ranking"] == ranking]

        assert values["auroc"]["mean"] == pytest.approx(_hand_mean(rows["auroc"].tolist()))
        assert values["recall"]["mean"] == pytest.approx(_hand_mean(rows["recall"].tolist()))
        assert values["curve"]["found"][-1] == pytest.approx(1.0)


def test_resume_trains_nothing_again(stored):
    before = stored["rows"][["seed", "arm", "split", "created_at"]]

    experiment.run_experiment(stored["workspace"], stored["store"], stored["id"])

    after = experiment_summary.arm_rows(stored["store"], stored["id"])[["seed", "arm", "split", "created_at"]]
    assert after.reset_index(drop=True).equals(before.reset_index(drop=True))
    assert experiment.get_experiment(stored["store"], stored["id"])["status"] == "done"


def test_cli_show_prints_json_summary(stored, capsys):
    code = main(["experiment", "--workspace", str(stored["workspace"].root), "--show", stored["id"],
                 "--format", "json"])

    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["arms"]["dropout"]["test_error"]["mean"] == pytest.approx(
        _hand_mean(_errors(stored["rows"], "dropout")))


def test_results_json_includes_the_experiment(stored, capsys):
    run_id = experiment.run_id_for(stored["id"], SEEDS[-1])

    code = main(["results", "--workspace", str(stored["workspace"].root), "--run", run_id, "--format", "json"])

    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["experiment"]["experiment_id"] == stored["id"]


def test_summary_labels_every_error_with_its_split(stored):
    for values in stored["summary"]["arms"].values():
        assert {"test_error", "validation_error"} <= set(values)
    assert "error" not in stored["summary"]["arms"]["dropout"]
    assert set(stored["summary"]["paired_test_error"]["dropout"]) == {"vs_round1", "vs_full", "vs_random"}
    assert set(stored["summary"]["paired_test_error"]["paper"]) == {"vs_round1", "vs_full"}
    assert set(stored["summary"]["paired_test_error"]["rule_top5"]) == {"vs_round1", "vs_full"}


def test_cli_list_shows_experiment(stored, capsys):
    code = main(["experiment", "--workspace", str(stored["workspace"].root), "--list", "--format", "json"])

    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [row["experiment_id"] for row in listed] == [stored["id"]]
    assert listed[0]["status"] == "done"


def test_experiment_lock_rejects_second_process(tmp_path):
    from curator.job_lock import JobLockedError, job_lock

    workspace = Workspace(tmp_path)
    store = Store(workspace)
    run = RunConfig(model="logreg", epochs=1, max_train_samples=100).to_dict()
    experiment_id = experiment.create_experiment(store, experiment.ExperimentConfig(seeds=[0], run=run), "locked")
    folder = experiment.experiment_dir(workspace, experiment_id)

    with job_lock(folder, "the test's holder"):
        with pytest.raises(JobLockedError) as error:
            experiment.run_experiment(workspace, store, experiment_id)
        # A process holds the lock, so a stored "running" status is believed.
        store.execute("UPDATE experiments SET status = 'running' WHERE experiment_id = ?", [experiment_id])
        assert experiment.get_experiment(store, experiment_id)["status"] == "running"

    assert f"experiment locked is already being worked on by process {os.getpid()}" in str(error.value)
    assert f"curator experiment --workspace {workspace.root} --resume locked" in str(error.value)
    assert not (workspace.root / "runs" / experiment.run_id_for(experiment_id, 0)).exists()
    # With the holder gone, the same stored status reads as interrupted.
    assert experiment.get_experiment(store, experiment_id)["status"] == "interrupted"
    assert experiment.list_experiments(store)["status"].tolist() == ["interrupted"]


def test_finished_seeds_match_summary(stored):
    assert experiment.finished_seeds(stored["store"], stored["id"]) == stored["summary"]["seeds_complete"]
    assert experiment.finished_seeds(stored["store"], stored["id"]) == SEEDS
