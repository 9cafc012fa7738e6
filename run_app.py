"""The Streamlit entry point: page navigation and the run selector that every page shares.

Start it with ``scripts/start_app.sh`` or ``streamlit run run_app.py``; the workspace folder is
``$CURATOR_WORKSPACE`` or ``./workspace``.
"""

import os

import streamlit as st

from pages import widgets


ROOT = os.path.dirname(os.path.abspath(__file__))

st.set_page_config(page_title="Data Dropout Curator", page_icon=":material/filter_alt:", layout="wide")

pages = [
    st.Page("pages/setup.py", title="Setup", icon=":material/tune:", default=True),
    st.Page("pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("pages/round_two.py", title="Round two", icon=":material/replay:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
# Pages another part of the project adds, shown once their files exist.
for path, title, icon in (("pages/experiment.py", "Experiment", ":material/science:"),
                          ("pages/results.py", "Results", ":material/monitoring:"),
                          ("pages/denoise_review.py", "Denoising review", ":material/blur_on:"),
                          ("pages/denoise_results.py", "Denoising results", ":material/compare:")):
    if os.path.exists(os.path.join(ROOT, path)):
        pages.append(st.Page(path, title=title, icon=icon))

navigation = st.navigation(pages)
workspace, store = widgets.open_workspace()
widgets.run_selector(store)
st.sidebar.caption(f"Workspace: `{workspace.root}`")
navigation.run()
