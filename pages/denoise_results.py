"""Denoising results: PSNR per test image for the noisy input and both rounds, and the images side by side."""

import streamlit as st

from curator import denoise_charts, denoise_queries
from pages import widgets

st.title("Denoising results")
st.markdown("PSNR in dB of each test image against its clean original (higher is better): the noisy input, "
            "round 1 trained on every patch, and round 2 retrained without the approved drop set. Test images "
            "took no part in choosing the drop set.")
workspace, store = widgets.open_workspace()
run_id = widgets.require_run(store, "denoise")

widgets.job_panel(workspace, store, run_id, key="denoise_results", show_finished=False)
approvals = denoise_queries.round2_approvals(store, run_id)
approval_id = None
if len(approvals) > 1:
    approval_id = st.selectbox("Round 2 of approved drop set", approvals, format_func=lambda value: f"#{value}",
                               key=f"denoise_results_approval_{run_id}")
elif approvals:
    approval_id = approvals[0]

table = denoise_queries.psnr_table(store, run_id, "test", approval_id)
if table.empty:
    st.info(f"Run {run_id} has no PSNR yet; it appears when round 1 has finished.")
    st.stop()

st.subheader("PSNR per test image")
st.dataframe(table.style.format(precision=2, subset=[c for c in table.columns if c != "image"]),
             hide_index=True, key="denoise_psnr_table")
st.plotly_chart(denoise_charts.psnr_figure(table), key="denoise_psnr_chart")

st.subheader("Side by side")
images = denoise_queries.saved_test_images(workspace, run_id, approval_id)
name = st.selectbox("Test image", list(images), key="denoise_results_image")
scores = table.set_index("image").loc[name]
columns = st.columns(3)
for column, label in zip(columns, ("noisy", "round 1", "round 2")):
    with column:
        if label in images[name]:
            st.image(images[name][label], caption=f"{label}: {scores[label]:.2f} dB", clamp=True)
        else:
            st.caption(f"{label}: not run yet")
