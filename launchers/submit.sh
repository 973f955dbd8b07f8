#!/usr/bin/env bash
# Submit a recipe to a Ray cluster with `ray job submit`.
#
#   launchers/submit.sh RECIPE.yaml [KEY=VALUE ...]
#
# Environment:
#   RAY_ADDRESS        the cluster's dashboard, default http://127.0.0.1:8265
#   RUN_DIR            the run directory on storage every node sees, default runs/<recipe name>
#   ENTRYPOINT_CPUS    CPUs reserved for the driver (default 1); ENTRYPOINT_GPUS likewise (default 0)
#   ANGEL_ENV_JSON     extra runtime-env env_vars as a JSON object, e.g. '{"HF_HOME": "/shared/hf"}'
#   NO_WAIT=1          return once submitted (follow with `ray job logs -f <id>`: stages, training progress)
#   RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)
#                      for a cluster with Ray's token authentication on (the Slurm and KubeRay
#                      launchers turn it on): `ray job submit` sends the token with the job
#
# The working directory (this checkout) is uploaded without .git, shards/ and runs/; resubmitting
# the same recipe and overrides on the same RUN_DIR resumes the run.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 RECIPE.yaml [KEY=VALUE ...]" >&2
  exit 2
fi
recipe=$1
shift
cd "$(dirname "$0")/.."
[ -f "$recipe" ] || { echo "$0: no recipe file $recipe" >&2; exit 2; }
name=$(basename "$recipe" .yaml)
run_dir=${RUN_DIR:-runs/$name}
env_json=${ANGEL_ENV_JSON:-"{}"}
# No accelerator is chosen here: each training rank and search actor uses a GPU when Ray gave it one
# (NCCL, bf16) and the CPU otherwise (gloo, fp32, DS_ACCELERATOR=cpu), wherever this script runs.
# The job's log gets training progress lines (one every 10 s at most) and progress bars redrawn
# every 30 s at most (TQDM_MININTERVAL), not at a terminal's rate.
runtime_env=$(python - "$env_json" <<'PY'
import json, sys
env = {"TQDM_MININTERVAL": "30", **json.loads(sys.argv[1])}
# Anchored: a bare "shards/" would also drop the package angel_dist/shards from the upload.
print(json.dumps({"excludes": [".git", "/shards/", "/runs/", "*.parquet", "__pycache__"], "env_vars": env}))
PY
)
args=(--address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . --runtime-env-json "$runtime_env"
      --entrypoint-num-cpus "${ENTRYPOINT_CPUS:-1}" --entrypoint-num-gpus "${ENTRYPOINT_GPUS:-0}")
[ -n "${NO_WAIT:-}" ] && args+=(--no-wait)
exec ray job submit "${args[@]}" -- angel run "$recipe" --run-dir "$run_dir" "$@"
