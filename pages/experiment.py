"""Experiment: data dropout and its controls over several seeds, with paired test-error differences."""

import json

import pandas as pd
import streamlit as st

from core.datasets import LOADERS
from core.drop_rules import DEFAULT_MAX_FRACTION, RULES, DropRule
from core.models import BUILDERS
from curator import experiment, experiment_charts, experiment_summary
from curator.config import RunConfig
from curator.progress import read_progress
from pages import widgets

SELECTED = "experiment_selected"

st.title("Experiment")
st.markdown(
    "Does retraining without the drop set really help, or is the change just chance? For every seed the "
    "experiment trains round 1, scores the training samples and applies the drop rule, then retrains from the "
    "same initial weights several ways: on every sample again, without the drop set, without the paper rule's "
    "drop set, and without a random set or the highest-loss set of the same size. Test error decides nothing; "
    "it is only reported.")
workspace, store = widgets.open_workspace()


def start_form() -> None:
    """Draw the settings of a new experiment and start it in a child process."""
    datasets, models = sorted(LOADERS), sorted(BUILDERS)
    left, middle, right = st.columns(3, gap="large")
    dataset = left.selectbox("Dataset", datasets, index=datasets.index("digits") if "digits" in datasets else 0,
                             key="experiment_dataset")
    model = left.selectbox("Model", models, index=models.index("small_cnn") if "small_cnn" in models else 0,
                           key="experiment_model")
    epochs = left.number_input("Epochs per training", min_value=1, max_value=1000, value=30, key="experiment_epochs")
    seeds = middle.number_input("Seeds", min_value=1, max_value=50, value=5, key="experiment_seeds",
                                help="Each seed changes the split, the initial weights and the label noise. "
                                     "Use at least 2 to get an interval; 5 is better.")
    first_seed = middle.number_input("First seed", min_value=0, value=0, key="experiment_first_seed")
    noise = middle.number_input("Label noise (share of training labels flipped)", min_value=0.0, max_value=0.9,
                                value=0.1, step=0.05, key="experiment_label_noise")
    pairs = middle.text_input("Flip only between class pairs (optional)", placeholder="3:5,7:1",
                              key="experiment_noise_pairs",
                              help="3:5 flips some 3s to 5; leave empty for symmetric noise over all classes.")
    rule_name = right.selectbox("Drop rule", RULES, key="experiment_rule",
                                help="validated (default) chooses how many to drop on held-out validation halves.")
    value = None
    if rule_name in ("validated", "top_fraction"):
        value = right.number_input("Share (maximum for validated)", min_value=0.0, max_value=1.0,
                                   value=DEFAULT_MAX_FRACTION, step=0.01, key="experiment_rule_value")
    elif rule_name in ("top_k", "threshold"):
        value = right.number_input("Count (top_k) or threshold", value=10.0, key="experiment_rule_value_other")

    if st.button("Start experiment", type="primary", key="experiment_start"):
        try:
            run = RunConfig(dataset=dataset, model=model, epochs=int(epochs), label_noise=float(noise),
                            noise_pairs=pairs.strip() or None, drop_rule=DropRule(rule_name, value).to_dict())
            config = experiment.ExperimentConfig(seeds=list(range(int(first_seed), int(first_seed) + int(seeds))),
                                                 run=run.to_dict())
        except ValueError as error:
            st.error(f"Not started: {error}")
            return
        experiment_id = experiment.create_experiment(store, config)
        experiment.start_experiment_job(workspace, experiment_id)
        st.session_state[SELECTED] = experiment_id
        st.rerun()


def choose_experiment(frame: pd.DataFrame) -> str:
    ids = frame["experiment_id"].tolist()
    requested = st.session_state.get(SELECTED)
    index = ids.index(requested) if requested in ids else 0
    labels = {row.experiment_id: f"{row.experiment_id} ({row.status})" for row in frame.itertuples()}
    return st.selectbox("Experiment", ids, index=index, format_func=labels.get, key="experiment_choice")


@st.fragment(run_every=1.0)
def live_progress(experiment_id: str) -> None:
    if not experiment.job_alive(workspace, experiment_id):
        st.rerun()
    # Redraw the whole page when a seed finishes, so its results appear while later seeds train.
    finished = len(experiment.finished_seeds(store, experiment_id))
    key = f"experiment_finished_seeds_{experiment_id}"
    if st.session_state.setdefault(key, finished) != finished:
        st.session_state[key] = finished
        st.rerun()
    progress = read_progress(experiment.progress_path(workspace, experiment_id)) or {}
    total = progress.get("total") or 0
    fraction = min(progress.get("step", 0) / total, 1.0) if total else 0.0
    st.progress(fraction, text=f"{progress.get('stage', 'starting')}: {progress.get('message', '')}")
    st.caption("The experiment runs in its own process; closing the browser does not stop it.")


def status_panel(record: dict) -> None:
    experiment_id = record["experiment_id"]
    if experiment.job_alive(workspace, experiment_id):
        live_progress(experiment_id)
        return
    if record["status"] == "done":
        st.success(f"Experiment {experiment_id} is finished.")
        return
    if record["status"] == "failed":
        st.error(f"Experiment {experiment_id} failed: {record['error']}")
    else:
        st.warning(f"Experiment {experiment_id} is not running (status {record['status']}). Finished seeds and "
                   f"arms are kept; resuming continues from there.")
    if st.button("Resume", key="experiment_resume"):
        experiment.start_experiment_job(workspace, experiment_id)
        st.rerun()


def arms_table(summary: dict) -> pd.DataFrame:
    rows = []
    for arm, values in summary["arms"].items():
        rows.append({"arm": arm, "dropped (mean)": values["n_dropped"]["mean"],
                     "test error (mean)": values["test_error"]["mean"],
                     "test error (std over seeds)": values["test_error"]["std"],
                     "validation error (mean; chose the drop set)": values["validation_error"]["mean"],
                     "what it trains on": summary["arm_labels"][arm]})
    return pd.DataFrame(rows)


def paired_table(summary: dict) -> pd.DataFrame:
    rows = []
    for arm, references in summary["paired_test_error"].items():
        for name, paired in references.items():
            if paired is None:
                continue
            rows.append({"arm": arm, "against": name.removeprefix("vs_"),
                         "test error difference (mean)": paired["mean"], "interval low": paired["low"],
                         "interval high": paired["high"], "seeds lower": f"{paired['lower']} of {paired['n']}",
                         "note": paired["note"] or ""})
    return pd.DataFrame(rows)


def detection_table(summary: dict) -> pd.DataFrame:
    rows = []
    for name, values in summary["detection"].items():
        rows.append({"ranking": values["label"], "AUROC (mean)": values["auroc"]["mean"],
                     "AUROC (std)": values["auroc"]["std"],
                     "precision of drop set": values["precision"]["mean"] if values["precision"] else None,
                     "recall of drop set": values["recall"]["mean"],
                     "precision at the number flipped": values["precision_at_flipped"]["mean"]})
    return pd.DataFrame(rows)


def show_results(experiment_id: str) -> None:
    summary = experiment_summary.experiment_summary(store, experiment_id)
    rows = experiment_summary.arm_rows(store, experiment_id)
    if rows.empty:
        st.info("Results appear here when the first seed has finished.")
        return
    st.caption(f"Rule: {summary['drop_rule']}. Seeds finished: {len(summary['seeds_complete'])} of "
               f"{len(summary['seeds'])} ({', '.join(str(seed) for seed in summary['seeds_complete'])}).")

    st.subheader("Test error of each arm")
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(arms_table(summary), hide_index=True, key="experiment_arms_table",
                 column_config={name: percent for name in ("test error (mean)", "test error (std over seeds)",
                                                           "validation error (mean; chose the drop set)")})
    st.plotly_chart(experiment_charts.arm_errors_figure(rows, summary["arm_labels"]), key="experiment_box")

    st.subheader("Paired differences")
    st.markdown(f"Each seed's test error minus the reference's on the same seed; the bars are "
                f"{summary['confidence']:.0%} t intervals over seeds. An interval that stays left of zero means "
                f"lower error beyond seed-to-seed variation.")
    reference = st.radio("Reference", ["round1", "full", "random"], horizontal=True, key="experiment_reference")
    st.plotly_chart(experiment_charts.paired_figure(summary, reference), key="experiment_paired")
    st.dataframe(paired_table(summary), hide_index=True, key="experiment_paired_table")

    st.subheader("Per class")
    st.plotly_chart(experiment_charts.per_class_figure(summary), key="experiment_per_class")

    if summary["detection"]:
        st.subheader("Finding the flipped labels")
        st.markdown("How well each ranking of the training samples puts the deliberately flipped labels first. "
                    "AUROC 1 puts every flipped label first; 0.5 is chance.")
        st.dataframe(detection_table(summary), hide_index=True, key="experiment_detection_table")
        left, right = st.columns(2, gap="large")
        left.plotly_chart(experiment_charts.detection_curve_figure(summary), key="experiment_curve")
        right.plotly_chart(experiment_charts.auroc_figure(summary), key="experiment_auroc")

    st.download_button("Download the summary (JSON)", json.dumps(summary, indent=1, default=str),
                       file_name=f"{experiment_id}.json", mime="application/json", key="experiment_download")


experiments = experiment.list_experiments(store)
with st.expander("Start a new experiment", expanded=experiments.empty):
    start_form()
if experiments.empty:
    st.info("No experiments yet. Start one above, or run `curator experiment` on the command line.")
    st.stop()

chosen = choose_experiment(experiments)
status_panel(experiment.get_experiment(store, chosen) | {"experiment_id": chosen})
show_results(chosen)
st.page_link("pages/results.py", label="Explain these results in plain words", icon=":material/monitoring:")
