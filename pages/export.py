"""Export: download the curated index of an approved drop set as CSV, JSON or Parquet."""

import streamlit as st

from curator import export
from pages import widgets

MIME_TYPES = {"csv": "text/csv", "json": "application/json", "parquet": "application/vnd.apache.parquet"}
FORMAT_NAMES = {"csv": "CSV", "json": "JSON", "parquet": "Parquet"}
PREVIEW_ROWS = 200

st.title("Export the curated index")
st.markdown("One row per training sample: `index` (0-based position in the training split), `sample_id`, the "
            "given `label`, the `influence` score and the approved `decision` (keep or drop). Runs with "
            "injected label noise add `true_label`.")
workspace, store = widgets.open_workspace()
run_id = widgets.require_run(store, "classification")

approvals = store.query("SELECT approval_id, n_drop, n_total, created_at FROM approvals WHERE run_id = ? "
                        "ORDER BY approval_id DESC", [run_id])
if approvals.empty:
    st.info(f"Run {run_id} has no approved drop set to export yet. Approve one on Review first.")
    st.page_link("pages/review.py", label="Go to Review", icon=":material/fact_check:")
    st.stop()

labels = {int(row.approval_id): f"#{int(row.approval_id)}: drops {int(row.n_drop):,} of {int(row.n_total):,} "
                                 f"({row.created_at:%Y-%m-%d %H:%M:%S})" for row in approvals.itertuples()}
approval_id = st.selectbox("Approved drop set", list(labels), format_func=labels.get, key=f"export_approval_{run_id}",
                           help="The latest approval is selected by default.")
frame = export.curated_index(store, run_id, approval_id)
dropped = int((frame["decision"] == "drop").sum())
st.caption(f"{len(frame):,} rows: {len(frame) - dropped:,} kept, {dropped:,} dropped.")

with st.container(horizontal=True):
    for fmt in export.FORMATS:
        st.download_button(FORMAT_NAMES[fmt], data=export.to_bytes(frame, fmt),
                           file_name=f"curated-{run_id}-{approval_id}.{fmt}", mime=MIME_TYPES[fmt],
                           key=f"download_{fmt}", on_click="ignore", icon=":material/download:")

st.subheader("Preview")
st.caption(f"The first {min(PREVIEW_ROWS, len(frame))} rows, by index.")
st.dataframe(frame.head(PREVIEW_ROWS), hide_index=True, key="export_preview",
             column_config={"influence": st.column_config.NumberColumn(format="%.4g")})
