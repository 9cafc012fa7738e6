#!/usr/bin/env bash
# Set up the environment when needed, then open the app on the embedded digits dataset.
# Extra arguments go to `streamlit run`, e.g. --server.port 8502.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/python" -m streamlit run run_app.py "$@"
