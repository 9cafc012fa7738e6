"""The Streamlit pages, run through ``streamlit.testing.v1.AppTest`` against a real workspace.

Most tests give the Review and Export pages a run whose influence scores were written by hand,
so that the expected drop sets, counts and gallery order follow from those numbers alone. One slow
test drives the whole flow with real child-process jobs: Setup, Review, Round two, Export.
"""

import base64
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from core.drop_rules import DropRule
from curator import decisions, export, jobs, queries, runs
from curator.config import RunConfig
from curator.pipeline import create_run, load_splits
from curator.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "run_app.py")
# The first script run imports torch, scikit-learn and plotly; on two busy cores that takes a while.
RUN_TIMEOUT = 180
JOB_TIMEOUT = 300


def open_app(page=None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    app.run()
    if page is not None:
        app.switch_page(page).run()
    assert_no_exception(app)
    return app


def assert_no_exception(app: AppTest) -> None:
    assert not app.exception, [element.value for element in app.exception]


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def plotly_figures(app: AppTest) -> list:
    return [json.loads(element.proto.spec) for element in app.get("plotly_chart")]


def trace_named(figure: dict, name: str) -> dict:
    return next(trace for trace in figure["data"] if trace.get("name") == name)


def values(array) -> np.ndarray:
    """Decode a figure JSON array: a plain list, or Plotly's base64 typed array ``{dtype, bdata}``."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
    return np.asarray(array)


def wait_for_job(store: Store, workspace, run_id: str) -> dict:
    """Poll the job until its process has exited; fail with its log when it failed or timed out."""
    deadline = time.monotonic() + JOB_TIMEOUT
    state = jobs.job_state(store, workspace, run_id)
    while state["alive"]:
        assert time.monotonic() < deadline, f"job of run {run_id} still running after {JOB_TIMEOUT} s"
        time.sleep(0.25)
        state = jobs.job_state(store, workspace, run_id)
    assert state["status"] in ("scored", "done"), (state, jobs.log_tail(workspace, run_id))
    return state


def make_scored_run(workspace, label_noise: float = 0.1):
    """Create a digits run and write its influence scores by hand, as the scoring stage would.

    Flipped labels get higher scores, so the drop rules catch them as real scores tend to.
    Returns ``(store, run_id, scores)`` with ``scores`` the rows written.
    """
    store = Store(workspace)
    config = RunConfig(model="logreg", epochs=1, damping=1.0, label_noise=label_noise)
    run_id = create_run(workspace, store, config)
    train = load_splits(config).train
    n = len(train)
    rng = np.random.default_rng(3)
    flipped = (train.true_labels != train.labels) if train.true_labels is not None else np.zeros(n, bool)
    influence_a = rng.normal(0.0, 1.0, n) + 3.0 * flipped
    influence_b = rng.normal(0.0, 1.0, n) + 3.0 * flipped
    influence = influence_a + influence_b
    scores = pd.DataFrame({
        "index": np.arange(n, dtype=np.int64),
        "sample_id": train.sample_ids,
        "label": train.labels,
        "true_label": pd.array(train.true_labels if train.true_labels is not None else [None] * n, dtype="Int64"),
        "loss": rng.uniform(0.0, 2.0, n),
        "prediction": np.where(flipped, train.true_labels if train.true_labels is not None else 0, train.labels),
        "influence": influence,
        "influence_a": influence_a,
        "influence_b": influence_b,
        "predicted_val_change": -influence / n,
    })
    scores.to_parquet(workspace.scores_dir(run_id) / "chunk-00000.parquet", index=False)
    (workspace.run_dir(run_id) / "scores.done").write_text("ok")
    solves = {"a": {"solver": "cg", "iterations": 48, "relative_residual": 9.5e-5, "converged": True},
              "b": {"solver": "cg", "iterations": 500, "relative_residual": 3.2e-3, "converged": False}}
    runs.update_run(store, run_id, status="scored", stage="review", timings={"round1_seconds": 1.5},
                    diagnostics={"influence": {
                        "solver": "cg", "curvature": "gauss_newton", "damping": 1.0, "params": "all",
                        "num_params": 650, "solves": solves,
                        "convergence_warnings": ["round 1 may not be at a minimum: a test warning"]}})
    decisions.set_rule(store, workspace, run_id, DropRule())
    return store, run_id, scores


def top_positive(scores: pd.DataFrame, k: int) -> set:
    """The indices of the ``k`` highest positive scores, computed here without the drop-rule code."""
    ranked = scores.sort_values(["influence", "index"], ascending=[False, True])
    return set(ranked.loc[ranked["influence"] > 0, "index"].head(k).astype(int))


def current_drops(store, workspace, run_id) -> set:
    frame = queries.samples(store, workspace, run_id, where="decision = 'drop'")
    return set(frame["index"].astype(int))


def latest_person_event(store, run_id, index):
    frame = store.query("SELECT decision FROM decisions WHERE run_id = ? AND sample_index = ? AND source = 'person'"
                        " ORDER BY event_id DESC LIMIT 1", [run_id, index])
    return "none" if frame.empty else frame.iloc[0, 0]


def choose_top_k(app: AppTest, run_id: str, k: int, cap_percent: int = 100) -> AppTest:
    app.selectbox(key=f"review_rule_{run_id}").select("top_k").run()
    app.number_input(key=f"review_value_{run_id}_top_k").set_value(k)
    app.slider(key=f"review_cap_{run_id}").set_value(cap_percent)
    app.button(key=f"apply_rule_{run_id}").click().run()
    assert_no_exception(app)
    return app


def first_caption_index(app: AppTest) -> int:
    caption = app.image[0].captions[0]
    return int(re.match(r"#(\d+) ", caption).group(1))


@pytest.fixture
def media_storages(monkeypatch):
    """Record the in-memory media storage of each AppTest run, to read what download buttons serve."""
    created = []

    class RecordingStorage(app_test_module.MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    return created


def downloaded(app: AppTest, storages: list) -> dict:
    """Return ``{file name: bytes}`` of every download button on the page of the last run."""
    files = {}
    for button in app.get("download_button"):
        served = storages[-1].get_file(button.proto.url.rsplit("/", 1)[-1].split(".")[0])
        files[served.filename] = served.content
    return files


def test_app_opens_on_empty_workspace(app_workspace):
    app = open_app()

    assert app.title[0].value == "Data Dropout Curator"
    assert "scores every training sample" in texts(app.markdown)
    assert app.selectbox(key="setup_dataset").value == "digits"
    assert app.selectbox(key="setup_model").value == "small_cnn"
    assert app.selectbox(key="setup_solver").value == "cg"
    assert "No runs yet" in texts(app.sidebar.caption)
    for page in ("pages/review.py", "pages/round_two.py", "pages/export.py"):
        app.switch_page(page).run()
        assert_no_exception(app)
        assert "no runs yet" in texts(app.info).lower(), page


def test_setup_lists_registered_entries(app_workspace, monkeypatch):
    from core.datasets import LOADERS
    from core.models import BUILDERS

    monkeypatch.setitem(LOADERS, "extra_images", LOADERS["digits"])
    monkeypatch.setitem(BUILDERS, "extra_net", BUILDERS["logreg"])
    app = open_app()

    assert "extra_images" in app.selectbox(key="setup_dataset").options
    assert "extra_net" in app.selectbox(key="setup_model").options


def test_setup_rejects_data_folder_for_digits(app_workspace):
    app = open_app()
    app.text_input(key="setup_data_dir").input("/tmp/images")
    app.button(key="start_round1").click().run()

    assert_no_exception(app)
    assert "reads no data folder" in texts(app.error)
    assert runs.list_runs(Store(app_workspace)).empty


def test_setup_failed_run_shows_error(app_workspace):
    store, run_id, _ = make_scored_run(app_workspace)
    runs.update_run(store, run_id, status="failed", error="IndefiniteHessianError: raise damping to 0.1")
    (app_workspace.run_dir(run_id) / "job.log").write_text("step one\nthe last log line\n")

    app = open_app()

    assert "raise damping to 0.1" in texts(app.error)
    assert "the last log line" in texts(app.code)
    assert app.button(key=f"setup_resume_{run_id}").label == "Retry from the last finished step"


def test_setup_interrupted_run_resumes(app_workspace):
    store, run_id, _ = make_scored_run(app_workspace)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (app_workspace.run_dir(run_id) / "job.pid").write_text(str(dead.pid))
    runs.update_run(store, run_id, status="running", stage="round1")

    app = open_app()
    assert "stopped during: Round 1 training" in texts(app.warning)
    app.button(key=f"setup_resume_{run_id}").click().run()
    assert_no_exception(app)

    state = jobs.job_state(store, app_workspace, run_id)
    assert state["pid"] != dead.pid
    assert state["alive"], jobs.log_tail(app_workspace, run_id)
    command = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"round1,score,rule" in command


def test_review_shows_summary_charts_and_gallery(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")

    # Summary, from the hand-written scores: the validated rule drops only positive scores.
    dropped = current_drops(store, app_workspace, run_id)
    assert dropped and all(scores.loc[list(dropped), "influence"] > 0)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Samples dropped"] == f"{len(dropped):,} of {len(scores):,}"
    flipped = scores["true_label"].astype(int) != scores["label"]
    caught = int(flipped[list(dropped)].sum())
    assert metrics["Flipped labels caught"] == f"{caught} of {int(flipped.sum())}"
    assert "Estimate" in texts(app.caption)

    # Histogram: SQL-aggregated bins whose counts add up to the samples of each decision.
    histogram = next(figure for figure in plotly_figures(app) if "Influence" in figure["layout"]["title"]["text"])
    assert values(trace_named(histogram, "dropped")["y"]).sum() == len(dropped)
    assert values(trace_named(histogram, "kept")["y"]).sum() == len(scores) - len(dropped)

    # Per-class table: class sizes and drops counted here from the scores.
    table = app.dataframe[0].value
    assert table["Samples"].tolist() == np.bincount(scores["label"], minlength=10).tolist()
    assert table["Dropped"].sum() == len(dropped)
    assert table["Flipped labels"].sum() == int(flipped.sum())

    # Gallery: most unfavorable first, then the most favorable tab.
    assert len(app.image) == 40
    most = int(scores["influence"].idxmax())
    least = int(scores["influence"].idxmin())
    assert app.image[0].captions[0].startswith(f"#{most} · label {scores.loc[most, 'label']} · pred ")
    assert any(image.captions[0].startswith(f"#{least} ") for image in app.image[20:])
    assert all("score" in image.captions[0] for image in app.image)

    # Solver diagnostics and the warnings that go with them.
    warnings = texts(app.warning)
    assert "a test warning" in warnings
    assert "half B did not converge" in warnings
    solves = next(frame.value for frame in app.dataframe if "Half A" in frame.value.columns)
    assert "48" in solves["Half A"].tolist()


def test_review_rule_change_matches_top_k(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")
    choose_top_k(app, run_id, 25)

    assert decisions.current_rule(store, run_id) == DropRule("top_k", 25, 1.0)
    assert current_drops(store, app_workspace, run_id) == top_positive(scores, 25)
    assert {metric.label: metric.value for metric in app.metric}["Samples dropped"] == f"25 of {len(scores):,}"
    assert "drops 25 samples" in texts(app.success)


def test_review_threshold_rule_drawn(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")
    app.selectbox(key=f"review_rule_{run_id}").select("threshold").run()
    app.number_input(key=f"review_value_{run_id}_threshold").set_value(2.5)
    app.slider(key=f"review_cap_{run_id}").set_value(100)
    app.button(key=f"apply_rule_{run_id}").click().run()
    assert_no_exception(app)

    assert current_drops(store, app_workspace, run_id) == set(scores.loc[scores["influence"] > 2.5, "index"])
    histogram = next(figure for figure in plotly_figures(app) if "Influence" in figure["layout"]["title"]["text"])
    assert "rule threshold 2.5" in [trace.get("name") for trace in histogram["data"]]


def test_review_warns_before_large_drop(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")
    app.selectbox(key=f"review_rule_{run_id}").select("top_fraction").run()
    app.number_input(key=f"review_value_{run_id}_top_fraction").set_value(0.2)
    app.slider(key=f"review_cap_{run_id}").set_value(100)
    app.button(key=f"apply_rule_{run_id}").click().run()

    expected = top_positive(scores, round(0.2 * len(scores)))
    assert current_drops(store, app_workspace, run_id) == expected
    share = len(expected) / len(scores)
    assert f"drops {share:.0%} of the training data" in texts(app.warning)
    assert app.button(key="approve").disabled
    app.checkbox(key=f"review_confirm_{run_id}").check().run()
    assert not app.button(key="approve").disabled


def test_review_override_and_undo(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")
    choose_top_k(app, run_id, 10)
    index = first_caption_index(app)
    assert index in current_drops(store, app_workspace, run_id)

    app.button(key=f"unfavorable-keep-{index}").click().run()
    assert latest_person_event(store, run_id, index) == "keep"
    assert index not in current_drops(store, app_workspace, run_id)
    assert {metric.label: metric.value for metric in app.metric}["Your overrides"] == "1"

    app.button(key=f"unfavorable-undo-{index}").click().run()
    assert latest_person_event(store, run_id, index) is None
    assert index in current_drops(store, app_workspace, run_id)
    assert {metric.label: metric.value for metric in app.metric}["Your overrides"] == "0"


def test_review_approval_then_export(app_workspace, media_storages):
    store, run_id, scores = make_scored_run(app_workspace)
    app = open_app("pages/review.py")
    choose_top_k(app, run_id, 10)
    index = first_caption_index(app)
    app.button(key=f"unfavorable-keep-{index}").click().run()
    app.button(key="approve").click().run()
    assert_no_exception(app)

    approval = decisions.get_approval(store, run_id)
    expected_drops = top_positive(scores, 10) - {index}
    assert approval["n_drop"] == len(expected_drops)
    assert f"Approved drop set #{approval['approval_id']}" in texts(app.success)

    app.switch_page("pages/export.py").run()
    assert_no_exception(app)
    files = downloaded(app, media_storages)
    stem = f"curated-{run_id}-{approval['approval_id']}"
    assert sorted(files) == sorted(f"{stem}.{fmt}" for fmt in ("csv", "json", "parquet"))
    stored = export.curated_index(store, run_id)
    from_csv = pd.read_csv(io.BytesIO(files[f"{stem}.csv"]))
    from_json = pd.DataFrame(json.loads(files[f"{stem}.json"]))
    from_parquet = pd.read_parquet(io.BytesIO(files[f"{stem}.parquet"]))
    for frame in (from_csv, from_json, from_parquet):
        assert frame["index"].tolist() == stored["index"].tolist()
        assert frame["decision"].tolist() == stored["decision"].tolist()
        assert set(frame.loc[frame["decision"] == "drop", "index"]) == expected_drops
        np.testing.assert_allclose(frame["influence"], scores["influence"], rtol=1e-12)
    pd.testing.assert_frame_equal(from_parquet, stored)


def test_review_dataset_changed_shows_error(app_workspace):
    store, run_id, _ = make_scored_run(app_workspace)
    store.execute("UPDATE runs SET fingerprint = 'not-the-data-on-disk' WHERE run_id = ?", [run_id])
    app = open_app("pages/review.py")

    assert "the data changed" in texts(app.error)
    assert "restore the original files or start a new run" in texts(app.error)
    assert len(app.image) == 0
    assert any(caption.value.startswith("#") for caption in app.caption)


def test_round_two_asks_for_approval_first(app_workspace):
    make_scored_run(app_workspace)
    app = open_app("pages/round_two.py")

    assert "no approved drop set yet" in texts(app.info)
    app.switch_page("pages/export.py").run()
    assert "no approved drop set to export yet" in texts(app.info)


@pytest.mark.slow
def test_whole_flow_with_real_jobs(app_workspace, media_storages):
    store = Store(app_workspace)

    # Setup: tiny settings, then a real child-process job for round 1, scoring and the rule.
    app = open_app()
    app.selectbox(key="setup_model").select("logreg")
    app.number_input(key="setup_epochs").set_value(2)
    app.number_input(key="setup_damping").set_value(1.0)
    app.slider(key="setup_label_noise").set_value(10)
    app.button(key="start_round1").click().run()
    assert_no_exception(app)
    run_id = runs.latest_run_id(store)
    assert run_id is not None
    assert run_id in texts(app.markdown)
    config = runs.get_run(store, run_id)["config"]
    assert (config["model"], config["epochs"], config["damping"], config["label_noise"]) == ("logreg", 2, 1.0, 0.1)
    wait_for_job(store, app_workspace, run_id)
    app.run()
    assert "review the drop set" in texts(app.success).lower()

    # Review: gallery, charts and table from the real scores; a rule change, an override, approval.
    app.switch_page("pages/review.py").run()
    assert_no_exception(app)
    assert len(app.image) == 40 and all("label" in image.captions[0] for image in app.image)
    titles = [figure["layout"]["title"]["text"] for figure in plotly_figures(app)]
    assert len(titles) == 3 and "Solver convergence" in titles
    assert app.dataframe[0].value["Samples"].sum() == 1257
    scores = pd.read_parquet(app_workspace.scores_dir(run_id))
    choose_top_k(app, run_id, 15)
    assert current_drops(store, app_workspace, run_id) == top_positive(scores, 15)
    index = first_caption_index(app)
    app.button(key=f"unfavorable-keep-{index}").click().run()
    assert latest_person_event(store, run_id, index) == "keep"
    app.button(key="approve").click().run()
    approval = decisions.get_approval(store, run_id)
    assert approval["n_drop"] == len(top_positive(scores, 15) - {index})

    # Round two: a second real job, then the comparison.
    app.switch_page("pages/round_two.py").run()
    app.button(key="start_round2").click().run()
    assert_no_exception(app)
    wait_for_job(store, app_workspace, run_id)
    app.run()
    assert_no_exception(app)
    metrics = queries.metrics(store, run_id)
    test_rows = metrics[metrics["split"] == "test"].set_index("round")
    shown = {metric.label: metric.value for metric in app.metric}
    assert shown["Round 1 test error"] == f"{test_rows.loc[1, 'error']:.2%}"
    assert shown["Round 2 test error"] == f"{test_rows.loc[2, 'error']:.2%}"
    assert shown["Training samples"] == f"1,257 → {1257 - approval['n_drop']:,}"
    assert "Flipped labels dropped" in shown
    figures = plotly_figures(app)
    per_class = next(figure for figure in figures if "per class" in figure["layout"]["title"]["text"])
    assert {trace["name"] for trace in per_class["data"]} == {"Round 1", "Round 2"}
    curves = next(figure for figure in figures if figure["layout"]["title"]["text"] == "Training loss")
    assert [len(values(trace["x"])) for trace in curves["data"]] == [2, 2]

    # Export: the three downloads agree with the store.
    app.switch_page("pages/export.py").run()
    files = downloaded(app, media_storages)
    stored = export.curated_index(store, run_id)
    parquet = next(content for name, content in files.items() if name.endswith(".parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(parquet)), stored)
    csv = next(content for name, content in files.items() if name.endswith(".csv"))
    assert pd.read_csv(io.BytesIO(csv))["decision"].tolist() == stored["decision"].tolist()


def test_read_only_workspace_browsable(open_tmp, deny_writes, monkeypatch):
    from curator.workspace import Workspace

    store = Store(Workspace(open_tmp))
    runs.insert_run(store, "run-1", RunConfig(), "fingerprint")
    run_folder = store.workspace.run_dir("run-1")
    deny_writes(store.path, run_folder, open_tmp / "runs", open_tmp)
    monkeypatch.setenv("CURATOR_WORKSPACE", str(open_tmp))

    app = open_app()
    warnings = " ".join(element.value for element in app.sidebar.warning)

    assert f"The workspace {open_tmp} is read-only for this user" in warnings
    assert not app.error


def test_review_missing_scores_shows_fix(app_workspace, capsys):
    import shutil

    from curator.cli import main

    store, run_id, _ = make_scored_run(app_workspace)
    shutil.rmtree(app_workspace.scores_dir(run_id))
    (app_workspace.run_dir(run_id) / queries.SORTED_SCORES).unlink(missing_ok=True)

    app = open_app("pages/review.py")
    errors = texts(app.error)

    assert f"the score files of run {run_id}" in errors
    assert f"curator score --workspace {app_workspace.root} --run {run_id}" in errors
    assert runs.get_run(store, run_id)["status"] == "scored"
    # The command line prints the same error, without a traceback.
    code = main(["results", "--workspace", str(app_workspace.root), "--run", run_id])
    err = capsys.readouterr().err
    assert code == 2
    assert f"curator results: error: the score files of run {run_id}" in err
    assert "Traceback" not in err


def test_stale_tab_cannot_approve(app_workspace):
    store, run_id, scores = make_scored_run(app_workspace)
    first_tab = open_app("pages/review.py")
    choose_top_k(first_tab, run_id, 10)
    # Another tab (here a direct call) switches to the paper rule after the first tab drew its page.
    decisions.set_rule(store, app_workspace, run_id, DropRule("paper", None, class_cap=1.0))

    first_tab.button(key="approve").click().run()
    assert_no_exception(first_tab)

    assert "changed after this page showed them" in texts(first_tab.error)
    with pytest.raises(LookupError):
        decisions.get_approval(store, run_id)
    # Once the page shows the current decisions and their warnings, approving freezes exactly those.
    first_tab.checkbox(key=f"review_confirm_{run_id}").check().run()
    first_tab.button(key="approve").click().run()
    approval = decisions.get_approval(store, run_id)
    assert approval["n_drop"] == int((scores["influence"] > 0).sum())
