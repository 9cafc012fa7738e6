"""The app's queries over the sorted scores file against the same numbers computed with pandas.

The scores have many tied influences, and the events include rule changes, person overrides and
cleared overrides. Those are where a faster query could silently differ from the definition: the
latest event per sample and source counts, a person's decision beats the rule's, and a cleared
override falls back to the rule.
"""

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest

from curator import queries
from curator.store import Store
from curator.workspace import Workspace

ROWS = 3000
RUN = "run-a"


def write_scores(workspace: Workspace, run_id: str, rng) -> pd.DataFrame:
    labels = rng.integers(0, 5, ROWS)
    influence = rng.integers(-20, 21, ROWS) / 4.0  # many ties
    frame = pd.DataFrame({
        "index": np.arange(ROWS, dtype=np.int64), "sample_id": [f"s-{i}" for i in range(ROWS)],
        "label": labels, "true_label": np.where(rng.random(ROWS) < 0.2, (labels + 1) % 5, labels),
        "loss": rng.random(ROWS), "prediction": labels, "influence": influence,
        "influence_a": influence / 2, "influence_b": influence / 2, "predicted_val_change": -influence / ROWS})
    for number, start in enumerate(range(0, ROWS, 700)):
        frame.iloc[start:start + 700].to_parquet(workspace.scores_dir(run_id) / f"chunk-{number:05d}.parquet",
                                                index=False)
    (workspace.run_dir(run_id) / "scores.done").write_text("ok")
    return frame


def append_events(store: Store, run_id: str, indices, decision, source: str) -> None:
    events = pd.DataFrame({"run_id": run_id, "sample_index": np.asarray(indices, dtype=np.int32),
                           "decision": decision, "source": source, "created_at": dt.datetime.now()})
    with store.connect() as connection:
        connection.register("events", events)
        connection.execute("INSERT INTO decisions (run_id, sample_index, decision, source, created_at) "
                           "SELECT run_id, sample_index, decision, source, created_at FROM events")


def expected_decisions(frame: pd.DataFrame, events: list) -> pd.DataFrame:
    """Replay ``(indices, decision, source)`` events in order, the way the decisions module defines them."""
    rule = pd.Series("keep", index=frame["index"])
    person = pd.Series(None, index=frame["index"], dtype=object)
    for indices, decision, source in events:
        (rule if source == "rule" else person).loc[indices] = decision
    result = frame.copy()
    result["decision"] = person.where(person.notna(), rule).to_numpy()
    result["source"] = np.where(person.notna(), "person", "rule")
    result["rule_decision"] = rule.to_numpy()
    return result


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    rng = np.random.default_rng(11)
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    store = Store(workspace)
    frame = write_scores(workspace, RUN, rng)
    events = [
        (rng.choice(ROWS, 400, replace=False), "drop", "rule"),
        (rng.choice(ROWS, 150, replace=False), "keep", "rule"),
        (rng.choice(ROWS, 60, replace=False), "drop", "person"),
        (rng.choice(ROWS, 60, replace=False), "keep", "person"),
        (rng.choice(ROWS, 40, replace=False), None, "person"),
    ]
    for indices, decision, source in events:
        append_events(store, RUN, indices, decision, source)
    append_events(store, "run-b", np.arange(ROWS), "drop", "rule")  # another run's events must not count
    return workspace, store, expected_decisions(frame, events)


def test_count_matches_replayed_events(reviewed):
    workspace, store, expected = reviewed
    dropped = expected[expected["decision"] == "drop"]
    flipped = expected["true_label"] != expected["label"]

    totals = queries.count(store, workspace, RUN)

    assert totals["total"] == ROWS
    assert totals["dropped"] == len(dropped)
    assert totals["overrides"] == (expected["source"] == "person").sum()
    assert totals["flipped"] == flipped.sum()
    assert totals["flipped_dropped"] == (flipped & (expected["decision"] == "drop")).sum()
    assert totals["positive"] == (expected["influence"] > 0).sum()
    assert totals["predicted_change"] == pytest.approx(dropped["predicted_val_change"].sum(), abs=1e-12)


def test_per_class_matches_replayed_events(reviewed):
    workspace, store, expected = reviewed
    expected = expected.assign(drop=expected["decision"] == "drop", flip=expected["true_label"] != expected["label"])
    groups = expected.groupby("label")

    table = queries.per_class(store, workspace, RUN)

    assert table["label"].tolist() == sorted(expected["label"].unique())
    assert table["count"].tolist() == groups.size().tolist()
    assert table["dropped"].tolist() == groups["drop"].sum().tolist()
    np.testing.assert_allclose(table["share_dropped"], groups["drop"].mean())
    np.testing.assert_allclose(table["mean_influence"], groups["influence"].mean())
    assert table["flipped_dropped"].tolist() == groups.apply(lambda g: (g["drop"] & g["flip"]).sum()).tolist()


def test_histogram_matches_numpy_bins(reviewed):
    workspace, store, expected = reviewed
    bins = 12
    low, high = expected["influence"].min(), expected["influence"].max()
    width = (high - low) / bins
    position = np.minimum(np.floor((expected["influence"] - low) / width), bins - 1).astype(int)
    reference = expected.assign(bin=position).groupby(["bin", "decision"]).size()

    table = queries.histogram(store, workspace, RUN, bins=bins)

    assert table.set_index(["bin", "decision"])["count"].to_dict() == reference.to_dict()
    assert table["count"].sum() == ROWS
    np.testing.assert_allclose(table["low"], low + table["bin"] * width)


@pytest.mark.parametrize("most_unfavorable", [True, False])
@pytest.mark.parametrize("label", [None, 2])
@pytest.mark.parametrize("page", [0, 9])
def test_gallery_page_matches_sorted_frame(reviewed, most_unfavorable, label, page):
    workspace, store, expected = reviewed
    rows = expected if label is None else expected[expected["label"] == label]
    ordered = rows.sort_values(["influence", "index"], ascending=[not most_unfavorable, True])
    reference = ordered.iloc[page * 20:(page + 1) * 20]

    got = queries.gallery_page(store, workspace, RUN, most_unfavorable, page=page, page_size=20, label=label)

    assert got["index"].tolist() == reference["index"].tolist()
    assert got["decision"].tolist() == reference["decision"].tolist()
    assert got["source"].tolist() == reference["source"].tolist()
    assert got["rule_decision"].tolist() == reference["rule_decision"].tolist()
    assert list(got.columns) == list(expected.columns)


def test_gallery_page_past_end_is_empty(reviewed):
    workspace, store, _ = reviewed

    assert queries.gallery_page(store, workspace, RUN, page=10_000).empty


def test_sorted_file_rebuilt_after_rescoring(reviewed, tmp_path):
    workspace, store, _ = reviewed
    path = queries.prepare_scores(workspace, RUN)
    built = path.stat().st_mtime_ns
    done = workspace.run_dir(RUN) / "scores.done"

    assert queries.prepare_scores(workspace, RUN).stat().st_mtime_ns == built
    os.utime(done, ns=(built + 1_000_000_000, built + 1_000_000_000))
    assert queries.prepare_scores(workspace, RUN).stat().st_mtime_ns > built
    assert not list(workspace.scores_dir(RUN).glob("*sorted*"))
