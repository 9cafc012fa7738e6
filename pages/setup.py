"""Setup: choose the data, model, influence solver and drop rule, then start round 1 and scoring."""

import streamlit as st

from core.datasets import LOADERS
from core.drop_rules import RULES
from core.influence import defaults
from core.models import BUILDERS
from core.presets import PRESETS
from curator import app_state, jobs, runs
from curator.config import TASKS
from curator.pipeline import create_run
from pages import widgets

st.title("Data Dropout Curator")
st.markdown(
    "Data Dropout Curator trains a model, scores every training sample by how much it is predicted to "
    "raise the validation loss, and shows you the samples that hurt most. You review and approve which "
    "to drop, then retrain without them and compare the test error of both rounds.")

workspace, store = widgets.open_workspace()
SESSION = "session"


def _index(options: list, value: str) -> int:
    return options.index(value) if value in options else 0


def show_current_run(run_id: str) -> None:
    run = runs.get_run(store, run_id)
    config = run["config"]
    with st.container(border=True):
        st.markdown(f"**Current run** `{run_id}`")
        st.caption(f"{config['dataset']} · {config['model']} · {config['epochs']} epochs · solver {config['solver']} "
                   f"({config['curvature']}, damping {config['damping']:g}) · label noise "
                   f"{config['label_noise']:.0%}")
        widgets.job_panel(workspace, store, run_id, key="setup")
        with st.container(horizontal=True):
            if workspace.has_scores(run_id):
                st.page_link("pages/review.py", label="Review the drop set", icon=":material/fact_check:")
            if run["stage"] == "done":
                st.page_link("pages/round_two.py", label="Compare round 1 and round 2", icon=":material/replay:")
        with st.expander("All runs in this workspace"):
            st.dataframe(runs.list_runs(store), hide_index=True)


current = widgets.current_run(store)
if current is not None:
    show_current_run(current)

st.subheader("New run")
datasets, models = sorted(LOADERS), sorted(BUILDERS)
data_column, influence_column, rule_column = st.columns(3, gap="large")

with data_column:
    st.markdown("**Data and training**")
    dataset = st.selectbox("Dataset", datasets, index=_index(datasets, "digits"), key="setup_dataset",
                           persist_state=SESSION, help="digits: 1,797 real 8x8 handwritten digits, embedded.")
    model = st.selectbox("Model", models, index=_index(models, "small_cnn"), key="setup_model",
                         persist_state=SESSION)
    epochs = st.number_input("Epochs per round", min_value=1, max_value=1000, value=30, step=1,
                             key="setup_epochs", persist_state=SESSION,
                             help="Influence assumes round 1 ends near a minimum, so train to convergence.")
    seed = st.number_input("Seed", min_value=0, value=0, step=1, key="setup_seed", persist_state=SESSION,
                           help="Seeds the split, the initial weights and the label noise.")
    noise_percent = st.slider("Label noise (demo)", min_value=0, max_value=50, value=0, step=5, format="%d%%",
                              key="setup_label_noise", persist_state=SESSION,
                              help="Flip this share of the training labels to see how many flipped labels the "
                                   "drop set catches. The true labels are kept for that count only.")

with influence_column:
    st.markdown("**Influence**")
    solver = st.selectbox("Solver", app_state.SOLVERS, index=_index(list(app_state.SOLVERS), defaults.SOLVER),
                          key="setup_solver", persist_state=SESSION,
                          help="cg: conjugate gradient (default). exact: forms the Hessian, for small models. "
                               "lissa: stochastic. paper: one LiSSA solve per validation sample, slow.")
    curvature = st.selectbox("Curvature", app_state.CURVATURES,
                             index=_index(list(app_state.CURVATURES), defaults.CURVATURE), key="setup_curvature",
                             persist_state=SESSION,
                             help="gauss_newton is positive semi-definite; the true Hessian of a network "
                                  "often is not, and CG then stops with an error.")
    damping = st.number_input("Damping", min_value=0.0, value=defaults.DAMPING, step=0.01, format="%g",
                              key="setup_damping", persist_state=SESSION,
                              help="Added to the curvature's diagonal. Larger is faster and more stable, "
                                   "smaller keeps more of the curvature.")
    params = st.text_input("Parameters", value="all", key="setup_params", persist_state=SESSION,
                           help="all, last_layer, or module names joined by commas.")

with rule_column:
    st.markdown("**Drop rule**")
    rule_name = st.selectbox("Rule", RULES, format_func=app_state.RULE_TITLES.get, key="setup_rule",
                             persist_state=SESSION, help=app_state.RULE_HELP)
    rule_value = widgets.rule_value_input(st, rule_name, None, key=f"setup_rule_value_{rule_name}",
                                          persist_state=SESSION)
    class_cap = st.slider("Per-class cap", min_value=1, max_value=100, value=33, format="%d%%",
                          key="setup_class_cap", persist_state=SESSION,
                          help="The largest share of any one class the rule may drop.")
    st.caption("You can change the rule on Review before approving anything.")

with st.expander("Data on disk, recipes and denoising"):
    data_dir = st.text_input("Data folder", value="", key="setup_data_dir", persist_state=SESSION,
                             help="Folder of the dataset's files, for datasets that are not embedded.")
    task = st.selectbox("Task", TASKS, key="setup_task", persist_state=SESSION,
                        help="denoise trains DnCNN on noisy patches of scikit-image's embedded images (or the "
                             "Data folder's train/, val/ and test/ images) and ignores the settings above.")
    preset = st.selectbox("Recipe preset", ["(none)"] + sorted(PRESETS), key="setup_preset", persist_state=SESSION,
                          help="A paper recipe (dataset, model, epochs, optimiser, schedule, solver settings). It "
                               "replaces the dataset, model, training and influence settings above; "
                               "'-cpu' presets are CPU-sized.")
    max_train = st.number_input("Max training samples (0 = all)", min_value=0, value=0, step=100,
                                key="setup_max_train", persist_state=SESSION,
                                help="A stratified, seeded subset of the training split for a quick trial.")

if st.button("Start round 1 and scoring", type="primary", key="start_round1"):
    try:
        rule = app_state.make_rule(rule_name, rule_value, class_cap / 100)
        config = app_state.build_run_config(dataset, model, solver, curvature, damping, params, epochs, seed,
                                            noise_percent / 100, rule, data_dir, task=task,
                                            preset=None if preset == "(none)" else preset,
                                            max_train_samples=int(max_train) or None)
        with st.spinner("Loading the dataset…"):
            new_run = create_run(workspace, store, config)
    except (ValueError, LookupError, OSError, RuntimeError) as error:
        st.error(f"The run was not started: {error}")
    else:
        jobs.start_job(workspace, new_run, app_state.ROUND1_STAGES)
        widgets.select_run_next(new_run)
        st.rerun()

