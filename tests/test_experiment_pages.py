"""The Experiment and Results pages through ``streamlit.testing.v1.AppTest`` on a tiny stored experiment.

The experiment is real (logistic regression, 2 epochs, one seed, 300 training samples, 20% label
noise), so the pages read what the runner stored; expected numbers come from the store's rows.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curator import experiment, experiment_summary, queries, runs
from curator.config import RunConfig
from curator.store import Store
from curator.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "run_app.py")
# The first script run imports torch, scikit-learn and plotly; on two busy cores that takes a while.
RUN_TIMEOUT = 180

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("pages"))
    store = Store(workspace)
    run = RunConfig(model="logreg", epochs=2, label_noise=0.2, max_train_samples=300).to_dict()
    experiment_id = experiment.create_experiment(store, experiment.ExperimentConfig(seeds=[0], run=run), "exp-pages")
    experiment.run_experiment(workspace, store, experiment_id)
    return {"workspace": workspace, "store": store, "id": experiment_id,
            "summary": experiment_summary.experiment_summary(store, experiment_id)}


@pytest.fixture
def app_on(stored, monkeypatch):
    monkeypatch.setenv("CURATOR_WORKSPACE", str(stored["workspace"].root))

    def open_page(page):
        app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
        app.run()
        app.switch_page(page).run()
        assert not app.exception, [element.value for element in app.exception]
        return app

    return open_page


def _texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def _table_with(app, column: str):
    """Return the first dataframe that has ``column`` (AppTest does not expose a dataframe's key)."""
    return next(frame.value for frame in app.dataframe if column in frame.value.columns)


def _figures(app) -> list:
    return [json.loads(element.proto.spec) for element in app.get("plotly_chart")]


def test_experiment_page_table_matches_store(stored, app_on):
    app = app_on("pages/experiment.py")
    rows = experiment_summary.arm_rows(stored["store"], stored["id"])
    test = rows[rows["split"] == "test"].set_index("arm")

    table = _table_with(app, "what it trains on").set_index("arm")

    assert set(table.index) == set(experiment.ARMS)
    for arm in experiment.ARMS:
        assert table.loc[arm, "test error (mean)"] == pytest.approx(test.loc[arm, "error"])
        assert table.loc[arm, "dropped (mean)"] == test.loc[arm, "n_dropped"]


def test_experiment_page_says_one_seed_gives_no_interval(stored, app_on):
    app = app_on("pages/experiment.py")

    table = _table_with(app, "against")

    assert table["interval low"].isna().all()
    assert table["note"].str.contains("undefined with one seed").all()


def test_experiment_page_draws_every_chart(stored, app_on):
    app = app_on("pages/experiment.py")

    titles = [figure["layout"]["title"]["text"] for figure in _figures(app)]

    assert any(title.startswith("Test error of each arm") for title in titles)
    assert any("minus round1" in title for title in titles)
    assert any(title.startswith("Change in test error per class") for title in titles)
    assert any(title.startswith("Flipped training labels found") for title in titles)
    assert any(title.startswith("AUROC") for title in titles)


def test_experiment_page_reference_switches_chart(stored, app_on):
    app = app_on("pages/experiment.py")

    app.radio(key="experiment_reference").set_value("random").run()

    titles = [figure["layout"]["title"]["text"] for figure in _figures(app)]
    assert any("minus random" in title for title in titles)


def test_experiment_page_detection_matches_store(stored, app_on):
    app = app_on("pages/experiment.py")
    stored_rows = experiment_summary.ranking_rows(stored["store"], stored["id"]).set_index("ranking")

    table = _table_with(app, "AUROC (mean)").set_index("ranking")

    assert table.loc["influence on validation loss", "AUROC (mean)"] == pytest.approx(
        stored_rows.loc["influence", "auroc"])
    assert table.loc["round-1 training loss", "AUROC (mean)"] == pytest.approx(
        stored_rows.loc["training_loss", "auroc"])


def test_experiment_page_rejects_bad_noise_pairs(stored, app_on):
    app = app_on("pages/experiment.py")

    app.text_input(key="experiment_noise_pairs").input("3-5")
    app.button(key="experiment_start").click().run()

    assert "noise pairs '3-5'" in _texts(app.error)
    assert experiment.list_experiments(stored["store"])["experiment_id"].tolist() == [stored["id"]]


def test_experiment_page_starts_and_resumes_job(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "workspace")
    monkeypatch.setenv("CURATOR_WORKSPACE", str(workspace.root))
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    app.run()
    app.switch_page("pages/experiment.py").run()
    assert "No experiments yet" in _texts(app.info)

    app.selectbox(key="experiment_model").set_value("logreg")
    app.number_input(key="experiment_seeds").set_value(1)
    app.number_input(key="experiment_epochs").set_value(1)
    app.button(key="experiment_start").click().run()

    store = Store(workspace)
    experiment_id = experiment.latest_experiment_id(store)
    config = experiment.get_experiment(store, experiment_id)["config"]
    pid = int((experiment.experiment_dir(workspace, experiment_id) / "job.pid").read_text())
    assert config.seeds == [0]
    assert config.run["model"] == "logreg"
    assert config.run["epochs"] == 1

    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while runs.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception
    assert "is not running" in _texts(app.warning)
    assert app.button(key="experiment_resume")


def test_results_page_explains_drop_set(stored, app_on):
    app = app_on("pages/results.py")
    run_id = experiment.run_id_for(stored["id"], 0)
    dropped = queries.samples(stored["store"], stored["workspace"], run_id, where="decision = 'drop'")
    total = queries.count(stored["store"], stored["workspace"], run_id)["total"]
    text = _texts(app.markdown)

    assert len(dropped) > 0
    assert f"dropped **{len(dropped):,} of {total:,}**" in text
    assert len(app.image) == min(12, len(dropped))
    assert all(image.captions[0].startswith("labelled ") for image in app.image)


def test_results_page_marks_flipped_examples(stored, app_on):
    app = app_on("pages/results.py")
    run_id = experiment.run_id_for(stored["id"], 0)
    top = queries.samples(stored["store"], stored["workspace"], run_id, where="decision = 'drop'",
                          order='influence DESC, "index"', limit=12)
    flipped = int((top["true_label"] != top["label"]).sum())

    assert sum("flipped, true" in image.captions[0] for image in app.image) == flipped


def test_results_page_states_certainty_in_words(stored, app_on):
    app = app_on("pages/results.py")
    text = _texts(app.markdown)
    dropout = stored["summary"]["arms"]["dropout"]

    assert "from a single seed, so we cannot yet tell a real change from chance" in text
    assert f"misclassified {dropout['test_error']['mean']:.2%}" in text
    assert f"contained {dropout['n_flipped_dropped']['mean']:.1f} of them" in text


def test_results_page_without_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATOR_WORKSPACE", str(Workspace(tmp_path / "empty").root))
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    app.run()
    app.switch_page("pages/results.py").run()

    assert not app.exception
    assert "no experiment to explain yet" in _texts(app.info)
