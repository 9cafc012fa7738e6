"""Round two: retrain without the approved drop set and compare test error with round 1."""

import streamlit as st

from curator import app_charts, app_compare, app_review, app_state, export, jobs, queries, runs
from pages import widgets

st.title("Round two")
st.markdown("Round 2 retrains the same architecture from the same initial weights on the samples the approval "
            "keeps, with augmentation on, and is compared with round 1 on the test split, which took no part "
            "in choosing the drop set.")
workspace, store = widgets.open_workspace()
run_id = widgets.require_run(store, "classification")

run = runs.get_run(store, run_id)
approvals = store.query("SELECT approval_id, n_drop, n_total, created_at FROM approvals WHERE run_id = ? "
                        "ORDER BY approval_id DESC", [run_id])
if approvals.empty:
    st.info(f"Run {run_id} has no approved drop set yet. Approve one on Review first.")
    st.page_link("pages/review.py", label="Go to Review", icon=":material/fact_check:")
    st.stop()

labels = {int(row.approval_id): f"#{int(row.approval_id)}: drops {int(row.n_drop):,} of {int(row.n_total):,} "
                                 f"({row.created_at:%Y-%m-%d %H:%M:%S})" for row in approvals.itertuples()}
approval_id = st.selectbox("Approved drop set", list(labels), format_func=labels.get, key=f"round2_approval_{run_id}",
                           help="The latest approval is selected by default.")

running = widgets.job_panel(workspace, store, run_id, key="round2", show_finished=False)
metrics = queries.metrics(store, run_id)
trained = approval_id in app_compare.approvals_with_round2(metrics)
label = "Retrain round 2 with this drop set" if trained else "Start round 2 with this drop set"
if st.button(label, type="primary", key="start_round2", disabled=running,
             help="Runs in its own process; the other pages stay usable meanwhile."):
    jobs.start_job(workspace, run_id, app_state.ROUND2_STAGES, approval_id=approval_id)
    st.rerun()

result = app_compare.comparison(metrics, approval_id)
if result is None:
    st.caption("The comparison appears here when round 2 with this drop set has finished.")
    st.stop()

st.subheader("Round 1 against round 2")
columns = st.columns(4)
columns[0].metric("Round 1 test error", f"{result['error_1']:.2%}", help=f"{result['n_train_1']:,} training samples")
columns[1].metric("Round 2 test error", f"{result['error_2']:.2%}", delta=f"{result['difference'] * 100:+.2f} points",
                  delta_color="inverse", help=f"{result['n_train_2']:,} training samples")
columns[2].metric("Training samples", f"{result['n_train_1']:,} → {result['n_train_2']:,}")
if app_review.has_label_noise(run):
    caught, flipped = app_compare.flipped_caught(export.curated_index(store, run_id, approval_id))
    columns[3].metric("Flipped labels dropped", f"{caught} of {flipped}",
                      help="Injected label flips that the approved drop set removes.")
st.info(app_compare.verdict(result), icon=":material/balance:")
augmentation = run["config"].get("round2_augmentation", "none")
if augmentation != run["config"].get("round1_augmentation", "none"):
    st.caption(f"Round 2 also trains with augmentation ({augmentation}) and round 1 does not, as in the data "
               f"dropout paper, so part of the difference comes from augmentation rather than from the dropped "
               f"samples.")

class_names = app_review.class_names_of(run)
overall_column, class_column = st.columns([1, 2], gap="large")
overall_column.plotly_chart(app_charts.error_overall_figure(result), key="round2_overall")
overall_column.caption("Whiskers span two standard errors of each round's error.")
class_column.plotly_chart(app_charts.error_by_class_figure(app_compare.per_class_errors(metrics, approval_id,
                                                                                         class_names)),
                          key="round2_per_class")

st.subheader("Training curves")
st.caption("Round 2's curves are those of its latest training.")
curves = app_compare.training_curves(queries.history(store, run_id))
loss_column, accuracy_column = st.columns(2, gap="large")
loss_column.plotly_chart(app_charts.curves_figure(curves, "loss", "Training loss"), key="round2_loss")
accuracy_column.plotly_chart(app_charts.curves_figure(curves, "accuracy", "Training accuracy"),
                             key="round2_accuracy")

with st.expander("All metrics of this run"):
    st.dataframe(metrics.drop(columns=["per_class"]), hide_index=True)
