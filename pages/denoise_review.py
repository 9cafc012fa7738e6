"""Denoising review: the influence histogram and the most unfavorable training patches in their source images."""

import streamlit as st

from curator import (app_charts, app_review, app_state, decisions, denoise_queries, gallery, jobs,
                     queries)
from pages import widgets

PAGE_SIZE = 12

st.title("Denoising review")
st.markdown("Each training sample is a noisy 40x40 patch (by default) with its clean target, cut from a training "
            "image. A positive influence means that removing the patch is predicted to lower the denoising loss "
            "on the whole validation images: the patch is *unfavorable*. The red box shows where it was cut.")
workspace, store = widgets.open_workspace()
run_id = widgets.require_run(store, "denoise")

running = widgets.job_panel(workspace, store, run_id, key="denoise_review")
if not workspace.has_scores(run_id):
    st.info(f"Run {run_id} has no scores yet; they appear when round 1 and scoring have finished.")
    st.stop()

totals = queries.count(store, workspace, run_id)
rule = decisions.current_rule(store, run_id)
columns = st.columns(3)
columns[0].metric("Training patches", f"{totals['total']:,}")
columns[1].metric("Dropped now", f"{totals['dropped']:,}",
                  help=(rule.describe() + ". The class cap applies per source image.") if rule else None)
columns[2].metric("Unfavorable (influence > 0)", f"{totals['positive']:,}")

bins = queries.histogram(store, workspace, run_id)
st.plotly_chart(app_charts.histogram_figure(bins, app_review.drop_cutoff(store, workspace, run_id)),
                key="denoise_histogram")

st.subheader("Patches by influence")
order = st.radio("Order", ["Most unfavorable first", "Most favorable first"], horizontal=True, key="denoise_order")
pages = gallery.page_count(totals["total"], PAGE_SIZE)
page = st.number_input("Page", min_value=1, max_value=pages, value=1, step=1, key="denoise_page") - 1
st.caption(gallery.page_span(page, totals["total"], PAGE_SIZE))
items = denoise_queries.patch_gallery(store, workspace, run_id, page=page, page_size=PAGE_SIZE,
                                      most_unfavorable=order.startswith("Most unfavorable"))
for start in range(0, len(items), 3):
    for column, item in zip(st.columns(3), items[start:start + 3]):
        with column:
            st.image(item["context"], caption=f"{item['source_image']}: patch at y={item['y']}, x={item['x']}")
            st.image(gallery.upscale_nearest(item["patch"]),
                     caption=f"{item['sample_id']} · influence {item['influence']:+.3g} · {item['decision']}")

st.subheader("Approve and retrain")
st.caption("Round 2 retrains the same DnCNN from the same initial weights on the kept patches, with flips and "
           "rotations, and reports PSNR per test image on Denoising results.")
if st.button("Approve the current drop set and start round 2", type="primary", disabled=running,
             key="denoise_approve"):
    approval_id = decisions.approve(store, workspace, run_id)
    jobs.start_job(workspace, run_id, app_state.ROUND2_STAGES, approval_id=approval_id)
    st.rerun()
