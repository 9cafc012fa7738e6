"""Results in plain words: what was dropped, why, what retraining changed, and how sure we are."""

import pandas as pd
import streamlit as st

from curator import app_review, experiment, experiment_charts, experiment_summary, gallery, queries, runs
from curator.pipeline import DatasetChangedError
from pages import widgets

SELECTED = "experiment_selected"
#: Example images shown from the drop set.
EXAMPLES = 12

st.title("Results in plain words")
workspace, store = widgets.open_workspace()

experiments = experiment.list_experiments(store)
if experiments.empty:
    st.info("There is no experiment to explain yet. Start one on the Experiment page.")
    st.page_link("pages/experiment.py", label="Go to Experiment", icon=":material/science:")
    st.stop()

ids = experiments["experiment_id"].tolist()
requested = st.session_state.get(SELECTED)
experiment_id = st.selectbox("Experiment", ids, index=ids.index(requested) if requested in ids else 0,
                             key="results_experiment")
summary = experiment_summary.experiment_summary(store, experiment_id)
if not summary["seeds_complete"]:
    st.info("This experiment has no finished seed yet; come back when the first seed is done.")
    st.stop()
findings = experiment_summary.plain_findings(summary)
seed = summary["seeds_complete"][0]
run_id = experiment.run_id_for(experiment_id, seed)
widgets.require_readable_scores(workspace, run_id)

st.markdown(
    "**The idea.** A model learns from training images. Some of them may hurt it, for example images with a "
    "wrong label. The method estimates, for every training image, how the model's mistakes on a separate set "
    "of checking images (the *validation* set) would change if that image were left out. It drops the images "
    "whose removal is predicted to help, retrains, and measures the result on *test* images that played no "
    "part in any of those choices.")

st.header("What was dropped")
samples = queries.samples(store, workspace, run_id, where="decision = 'drop'", order="influence DESC")
n_total = queries.count(store, workspace, run_id)["total"]
st.markdown(f"In seed {seed}, the rule (*{summary['drop_rule']}*) dropped **{len(samples):,} of {n_total:,}** "
            f"training images. The ones it was most sure about come first.")
if samples.empty:
    st.info("Nothing was dropped in this seed: the rule found no set whose removal helped on held-out "
            "validation data, so round 2 trained on everything.")
else:
    try:
        split = widgets.train_split(str(workspace.root), run_id)
    except DatasetChangedError as error:
        st.error(str(error))
    else:
        class_names = app_review.class_names_of(runs.get_run(store, run_id))
        examples = samples.head(EXAMPLES).to_dict("records")
        columns = st.columns(6)
        for number, row in enumerate(examples):
            caption = f"labelled {gallery.class_name(row['label'], class_names)}"
            badge = gallery.flip_badge(row, class_names)
            if badge:
                caption += f" ({badge})"
            columns[number % 6].image(gallery.upscale_nearest(split.display_image(int(row["index"]))),
                                      caption=caption, width="stretch")

st.header("Why the method thinks they hurt")
predicted = float(samples["predicted_val_change"].sum()) if not samples.empty else 0.0
st.markdown(
    f"Each dropped image pulls the model in a direction that, by the method's estimate, makes it worse on the "
    f"validation images. Removing all of them together is predicted to change the total validation loss by "
    f"**{predicted:+.3g}** (negative means better). This is a first-order estimate from round 1's model; "
    f"retraining is what actually tests it.")
if findings["flipped"]:
    st.markdown(findings["flipped"] + " Wrong labels are the kind of image the method should find.")

st.header("What retraining without them changed")
if findings["changed"]:
    st.markdown(findings["changed"])
rows = experiment_summary.arm_rows(store, experiment_id)
labels = {arm: summary["arm_labels"][arm] for arm in ("round1", "full", "dropout", "random")
          if arm in summary["arm_labels"]}
st.plotly_chart(experiment_charts.arm_errors_figure(rows, labels), key="results_box")
st.caption("Each dot is one seed. round1: the first model. full: retrained on everything the same way as the "
           "others. dropout: retrained without the dropped images. random: retrained without as many images "
           "picked at random.")

st.header("How sure we are")
st.markdown(f"We repeated everything with {len(summary['seeds_complete'])} seed(s); each seed changes which images "
            f"are in each set and how the model starts. We compare on the same seed and ask whether the "
            f"difference is larger than the seed-to-seed variation.")
for key in ("sure_round1", "sure_full", "sure_random"):
    st.markdown(f"- {findings[key]}")
st.plotly_chart(experiment_charts.paired_figure(summary, "round1"), key="results_paired")
st.caption("Retraining uses augmentation (slightly shifted images) and round 1 does not, so part of any "
           "difference from round 1 comes from augmentation. The comparisons with *full* and *random* remove it.")
with st.expander("The numbers behind this page"):
    st.dataframe(pd.DataFrame([{"arm": arm, "test error (mean)": values["test_error"]["mean"],
                                "test error (std over seeds)": values["test_error"]["std"],
                                "dropped (mean)": values["n_dropped"]["mean"]}
                               for arm, values in summary["arms"].items()]), hide_index=True,
                 key="results_numbers")
