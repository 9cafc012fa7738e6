"""Review: see what the drop rule removes, inspect the most (un)favorable images, override, approve."""

import streamlit as st

from core.drop_rules import RULES
from curator import app_charts, app_review, app_state, decisions, gallery, jobs, queries, runs, verify
from curator.pipeline import DatasetChangedError
from pages import widgets

COLUMNS = 5

st.title("Review the drop set")
workspace, store = widgets.open_workspace()
run_id = widgets.require_run(store, "classification")

run = runs.get_run(store, run_id)
if not workspace.has_scores(run_id):
    st.info(f"Run {run_id} has no influence scores yet; they appear here when round 1 and scoring finish.")
    widgets.job_panel(workspace, store, run_id, key="review")
    st.stop()
widgets.job_panel(workspace, store, run_id, key="review", show_finished=False)

class_names = app_review.class_names_of(run)
label_noise = app_review.has_label_noise(run)
summary = decisions.drop_summary(store, workspace, run_id)
rule = decisions.current_rule(store, run_id)


def show_summary() -> None:
    st.subheader("Drop set before approval")
    st.caption(f"Rule: {rule.describe() if rule else 'none set'}. Your overrides take precedence over the rule.")
    columns = st.columns(5 if label_noise else 4)
    columns[0].metric("Samples dropped", f"{summary['dropped']:,} of {summary['total']:,}")
    columns[1].metric("Share of the training set", f"{summary['share']:.1%}")
    columns[2].metric("Your overrides", f"{summary['overrides']:,}")
    columns[3].metric("Loss change (estimate)", f"{summary['predicted_change']:+.3g}",
                      help="First-order estimate of the change in total validation loss, summed over "
                           "the dropped samples.")
    if label_noise:
        columns[4].metric("Flipped labels caught", f"{summary['flipped_dropped']} of {summary['flipped']}")
    if label_noise:
        st.caption(app_review.flipped_caught_text(summary["flipped_dropped"], summary["flipped"], summary["dropped"]))
    st.caption(app_review.estimate_text(summary["predicted_change"]))
    for warning in summary["warnings"]:
        st.warning(f"This drop set {warning}.", icon=":material/warning:")
    if rule is not None and rule.name == "validated" and summary["dropped"] == 0:
        st.info("The validated rule drops nothing for this run: ranking by one validation half did not lower "
                "the other half's estimated loss by more than random orderings do, within the rule's cap. "
                "On clean data that usually means no sample clearly hurts. Choose top-k or a threshold to "
                "drop samples anyway.", icon=":material/info:")
    skipped = run["diagnostics"].get("dataset", {}).get("skipped") or []
    if skipped:
        with st.expander(f"{len(skipped)} file(s) of the dataset could not be read and were left out"):
            st.dataframe(skipped, hide_index=True)


def show_rule_controls() -> None:
    with st.container(border=True):
        st.markdown("**Drop rule**")
        name_column, value_column, cap_column = st.columns([3, 2, 2])
        current_name = rule.name if rule else "validated"
        name = name_column.selectbox("Rule", RULES, index=RULES.index(current_name),
                                     format_func=app_state.RULE_TITLES.get, key=f"review_rule_{run_id}",
                                     help=app_state.RULE_HELP)
        value = widgets.rule_value_input(value_column, name, app_state.default_rule_value(name, rule),
                                         key=f"review_value_{run_id}_{name}")
        cap = cap_column.slider("Per-class cap", min_value=1, max_value=100,
                                value=round(app_state.default_class_cap(rule) * 100), format="%d%%",
                                key=f"review_cap_{run_id}", help="The largest share of any class the rule may drop.")
        try:
            new_rule = app_state.make_rule(name, value, cap / 100, current=rule)
        except ValueError as error:
            st.error(str(error))
            return
        preview = int(decisions.preview_rule(store, workspace, run_id, new_rule).sum())
        st.caption(f"{new_rule.describe()}. It would drop {preview:,} samples before your overrides "
                   f"(now {summary['dropped']:,} are dropped).")
        # Applied in the script body, not in a callback, so the rule is built from this run's widget values.
        if st.button("Apply rule", type="primary", key=f"apply_rule_{run_id}"):
            dropped = decisions.set_rule(store, workspace, run_id, new_rule)
            st.session_state["review_rule_message"] = (f"Rule applied: it drops {dropped:,} samples before "
                                                       f"your overrides.")
            st.rerun()
        message = st.session_state.pop("review_rule_message", None)
        if message:
            st.success(message)


def show_charts() -> None:
    histogram_column, class_column = st.columns(2, gap="large")
    with histogram_column:
        chart = st.container()
        log_counts = st.toggle("Logarithmic count axis", key="review_log_counts",
                               help="Shows the few samples in the tails next to the many near zero.")
        bins = queries.histogram(store, workspace, run_id)
        cutoff = app_review.drop_cutoff(store, workspace, run_id)
        threshold = rule.value if rule is not None and rule.name == "threshold" else None
        chart.plotly_chart(app_charts.histogram_figure(bins, cutoff, log_counts, threshold), key="review_histogram")
    with class_column:
        table = app_review.per_class_table(summary["per_class"], class_names, label_noise)
        st.plotly_chart(app_charts.per_class_figure(table, rule.class_cap if rule else None),
                        key="review_per_class_chart")
    st.dataframe(table, hide_index=True, key="review_per_class_table", column_config={
        "Share dropped": st.column_config.NumberColumn(format="percent"),
        "Mean score": st.column_config.NumberColumn(format="%.3g", help="Mean influence of the class's samples"),
    })


def _override(index: int, decision) -> None:
    decisions.override(store, run_id, index, decision)


def _show_tile(row: dict, split, prefix: str) -> None:
    index = int(row["index"])
    with st.container(border=True):
        caption = gallery.tile_caption(row, class_names)
        if split is not None:
            st.image(gallery.upscale_nearest(split.display_image(index)), caption=caption, width="stretch")
        else:
            st.caption(caption)
        with st.container(horizontal=True, gap="small"):
            text, color = gallery.decision_badge(row)
            st.badge(text, color=color)
            flip = gallery.flip_badge(row, class_names)
            if flip:
                st.badge(flip, color="violet")
        if row["decision"] == "drop":
            st.button("Keep", key=f"{prefix}-keep-{index}", on_click=_override, args=(index, "keep"),
                      width="stretch", help="Keep this sample whatever the rule decides.")
        else:
            st.button("Drop", key=f"{prefix}-drop-{index}", on_click=_override, args=(index, "drop"),
                      width="stretch", help="Drop this sample whatever the rule decides.")
        if row["source"] == "person":
            st.button("Undo", key=f"{prefix}-undo-{index}", on_click=_override, args=(index, None),
                      width="stretch", type="tertiary", help="Clear your decision; the rule decides again.")


def _shift_page(key: str, step: int, total: int) -> None:
    st.session_state[key] = gallery.clamp_page(st.session_state.get(key, 0) + step, total)


def show_gallery(split, unfavorable: bool, label) -> None:
    prefix = "unfavorable" if unfavorable else "favorable"
    total = summary["total"] if label is None else int(
        summary["per_class"].loc[summary["per_class"]["label"] == label, "count"].sum())
    page_key = f"page_{prefix}_{run_id}_{label}"
    page = gallery.clamp_page(st.session_state.get(page_key, 0), total)

    previous_column, span_column, next_column = st.columns([1, 4, 1], vertical_alignment="center")
    previous_column.button("Previous", key=f"{prefix}_previous", icon=":material/chevron_left:",
                           disabled=page == 0, on_click=_shift_page, args=(page_key, -1, total))
    span_column.caption(f"Page {page + 1} of {gallery.page_count(total)}: {gallery.page_span(page, total)}, "
                        f"{'highest' if unfavorable else 'lowest'} score first")
    next_column.button("Next", key=f"{prefix}_next", icon=":material/chevron_right:",
                       disabled=page + 1 >= gallery.page_count(total), on_click=_shift_page,
                       args=(page_key, 1, total))

    frame = queries.gallery_page(store, workspace, run_id, unfavorable, page, gallery.PAGE_SIZE, label)
    rows = frame.to_dict("records")
    for start in range(0, len(rows), COLUMNS):
        for column, row in zip(st.columns(COLUMNS), rows[start:start + COLUMNS]):
            with column:
                _show_tile(row, split, prefix)


def show_galleries() -> None:
    st.subheader("Images by influence")
    st.caption("Positive scores are unfavorable: removing the sample is predicted to lower validation loss. "
               "Keep or Drop overrides the rule for one image; Undo hands it back to the rule.")
    try:
        split = widgets.train_split(workspace_root, run_id)
    except DatasetChangedError as error:
        st.error(f"The images cannot be shown, because the data changed: {error}")
        split = None
    labels = summary["per_class"]["label"].tolist()
    label = st.selectbox("Class", [None] + labels, key=f"review_class_{run_id}",
                         format_func=lambda value: "all classes" if value is None
                         else f"class {gallery.class_name(value, class_names)}")
    unfavorable_tab, favorable_tab = st.tabs(["Most unfavorable", "Most favorable"])
    with unfavorable_tab:
        show_gallery(split, True, label)
    with favorable_tab:
        show_gallery(split, False, label)


def show_diagnostics() -> None:
    st.subheader("Solver and timings")
    influence = run["diagnostics"].get("influence") or {}
    for warning in influence.get("convergence_warnings", []):
        st.warning(warning, icon=":material/warning:")
    for half, solve in sorted((influence.get("solves") or {}).items()):
        if solve.get("converged") is False:
            st.warning(f"The solve for validation half {half.upper()} did not converge (relative residual "
                       f"{solve.get('relative_residual', float('nan')):.3g}); raise damping or the iteration limit.",
                       icon=":material/warning:")
    settings_column, timing_column = st.columns(2, gap="large")
    settings_column.markdown("**Settings**")
    settings_column.dataframe(app_review.solver_settings(influence), hide_index=True)
    timing_column.markdown("**Seconds per stage**")
    timing_column.dataframe(app_review.timings_table(run["timings"]), hide_index=True)
    solve_column, curve_column = st.columns(2, gap="large")
    solve_column.markdown("**Solves, one per validation half**")
    solve_column.dataframe(app_review.solver_table(influence), hide_index=True)
    curves = app_review.residual_curves(influence)
    if not curves.empty:
        tolerance = next((solve.get("tolerance") for solve in (influence.get("solves") or {}).values()), None)
        curve_column.plotly_chart(app_charts.residual_figure(curves, tolerance), key="review_residuals")


def show_verification() -> None:
    with st.expander("Check the scores by leave-one-out retraining"):
        st.caption("Retrains without each of the K most unfavorable, K most favorable and K random samples and "
                   "compares the actual change in total validation loss with the predicted one (-influence / n). "
                   "It costs 3K+2 retrainings and runs in the background; other pages stay usable.")
        k_column, mode_column, button_column = st.columns([1, 1, 1])
        k = k_column.number_input("K per group", min_value=2, max_value=100, value=10, key=f"verify_k_{run_id}")
        mode = mode_column.selectbox("Retraining", ["warm", "scratch"], key=f"verify_mode_{run_id}",
                                     help="warm: a few epochs from the round-1 weights; scratch: round 1's "
                                          "whole schedule from its initial weights.")
        running = jobs.verification_running(workspace, run_id)
        if button_column.button("Start the check", key=f"verify_start_{run_id}", disabled=running):
            jobs.start_verification(workspace, run_id, int(k), mode)
            st.rerun()
        if running:
            st.info("The leave-one-out check is running; refresh the page to see its result.")
        frame = verify.latest_verification(store, run_id)
        if len(frame):
            st.plotly_chart(verify.verification_figure(frame), key=f"verify_chart_{run_id}")
            st.caption(f"Mode {frame.attrs['mode']}, K = {frame.attrs['k']}, run at {frame.attrs['created_at']}. "
                       "Points near the dotted line are samples whose removal the scores predicted well.")


def _approve(shown_version: int) -> None:
    try:
        approval_id = decisions.approve(store, workspace, run_id, expected_version=shown_version)
    except decisions.StaleDecisionsError as error:
        st.session_state["review_approval_error"] = str(error)
        return
    approval = decisions.get_approval(store, run_id, approval_id)
    st.session_state["review_approval_message"] = (
        f"Approved drop set #{approval['approval_id']}: {approval['n_drop']:,} of {approval['n_total']:,} "
        f"samples dropped. Start round 2 on Round two.")


def show_approval() -> None:
    st.subheader("Approve")
    latest = widgets.latest_approval_id(store, run_id)
    if latest is not None:
        approval = decisions.get_approval(store, run_id, latest)
        st.caption(f"Latest approval: #{latest}, {approval['n_drop']:,} of {approval['n_total']:,} dropped, "
                   f"at {approval['created_at']:%Y-%m-%d %H:%M:%S}. A new approval freezes the decisions above.")
    confirmed = True
    if summary["warnings"]:
        confirmed = st.checkbox("I have read the warnings above and want to approve this drop set anyway",
                                key=f"review_confirm_{run_id}")
    # The version of the decisions drawn on this page: approving checks it, so a change made in
    # another tab since (and any warning it brings) is never approved unseen.
    shown_version = decisions.decisions_version(store, run_id)
    st.button("Approve drop set", type="primary", key="approve", disabled=not confirmed, on_click=_approve,
              args=(shown_version,))
    message = st.session_state.pop("review_approval_message", None)
    if message:
        st.success(message)
    stale = st.session_state.pop("review_approval_error", None)
    if stale:
        st.error(stale)
    if latest is not None:
        st.page_link("pages/round_two.py", label="Retrain on Round two", icon=":material/replay:")


workspace_root = str(workspace.root)
show_summary()
show_rule_controls()
show_charts()
show_galleries()
show_diagnostics()
show_verification()
show_approval()
