#!/usr/bin/env bash
# Submit a recipe to a Ray cluster with `ray job submit`.
#
#   launchers/submit.sh RECIPE.yaml [KEY=VALUE ...]
#
# Environment:
#   RAY_ADDRESS        the cluster's dashboard, default http://127.0.0.1:8265
#   RUN_DIR            the run directory: an absolute path on storage every node mounts at that path;
#                      default runs/<recipe name>, relative, refused on a cluster of several nodes
#   ENTRYPOINT_CPUS    CPUs reserved for the driver (default 1); ENTRYPOINT_GPUS likewise (default 0)
#   ANGEL_ENV_JSON     extra runtime-env env_vars as a JSON object, e.g. '{"HF_HOME": "/shared/hf"}'
#   NO_WAIT=1          return once submitted (follow with `ray job logs -f <id>`: stages, training progress)
#   RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)
#                      for a cluster with Ray's token authentication on (the Slurm and KubeRay
#                      launchers turn it on): `ray job submit` sends the token with the job
#
# The working directory (this checkout) is uploaded without .git, shards/ and runs/; resubmitting
# the same recipe and overrides on the same RUN_DIR resumes the run.
#
# The job runs in the copy of the upload that Ray unpacks on each node, under its temp dir:
# <temp dir>/session_<cluster start>/runtime_resources/working_dir_files/_ray_pkg_<content hash>/.
# Relative paths (the recipe, RUN_DIR, the recipe's inputs) are read there. A relative RUN_DIR is
# made absolute inside that copy, so each node would write into its own copy at the same path:
# with more than one live node (`ray list nodes`, asked at submission) it is refused. On one node
# it is allowed, and resubmitting resumes it only while the cluster runs the same session and the
# checkout is unchanged (a changed checkout's upload has another hash, so another directory); Ray
# deletes copies no job uses, the run inside, once they pass RAY_RUNTIME_ENV_WORKING_DIR_CACHE_SIZE_GB
# (10 GB).
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
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [[ $run_dir != /* ]]; then
  live=$(ray list nodes --address "$address" --filter state=ALIVE --format json |
         python -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null) || live=
  if [ "$live" != 1 ]; then
    nodes=${live:+"has $live live nodes"}
    echo "$0: RUN_DIR=$run_dir is relative and the cluster at $address" \
         "${nodes:-could not be asked how many nodes it has}: the job runs" \
         "in the copy of this checkout that Ray unpacks on each node, and each node would write the run" \
         "into its own copy. Set RUN_DIR to an absolute path on storage every node mounts at that path," \
         "e.g. RUN_DIR=/shared/runs/$name." >&2
    exit 2
  fi
fi
env_json=${ANGEL_ENV_JSON:-"{}"}
# No accelerator is chosen here: each training rank and search actor uses a GPU when Ray gave it one
# (NCCL, bf16) and the CPU otherwise (gloo, fp32, DS_ACCELERATOR=cpu), wherever this script runs.
# The job's log gets training progress lines (one every 10 s at most) and progress bars redrawn
# every 30 s at most (TQDM_MININTERVAL), not at a terminal's rate.
runtime_env=$(python - "$env_json" <<'PY'
import json, sys
env = {"TQDM_MININTERVAL": "30", **json.loads(sys.argv[1])}
# Anchored: a bare "shards/" would also drop the package angel_dist/shards from the upload.
print(json.dumps({"excludes": [".git", "/shards/", "/runs/", "/.gpu/", "*.parquet", "__pycache__"], "env_vars": env}))
PY
)
args=(--address "$address" --working-dir . --runtime-env-json "$runtime_env"
      --entrypoint-num-cpus "${ENTRYPOINT_CPUS:-1}" --entrypoint-num-gpus "${ENTRYPOINT_GPUS:-0}")
[ -n "${NO_WAIT:-}" ] && args+=(--no-wait)
exec ray job submit "${args[@]}" -- angel run "$recipe" --run-dir "$run_dir" "$@"
