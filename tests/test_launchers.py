"""The cluster launchers as a cluster would run them, with no cluster: the KubeRay RayJob read as
Kubernetes reads it, the Slurm batch script and submit.sh run with stand-in `srun`, `scontrol`,
`hostname` and `ray` executables. Every path a recipe reads must be there for the processes that
read it (under a shared volume of every pod; absolute, or inside the upload, on Slurm), GPUs must be
asked for, /dev/shm sized, and the Slurm job must wait for its nodes by polling `ray status`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from angel_dist.cli import parser
from angel_dist.kb.build import embedded_source
from angel_dist.model.vocab import is_checkpoint
from angel_dist.pipeline import load_recipe
from angel_dist.pipeline.recipe import _inputs

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ROOT / "launchers"


def _reads(recipe_file: Path, overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """({key: path} of every file and directory the recipe reads, [models and tokenizers it reads
    from the Hugging Face cache]). A relative ds_config is found in the package, kb.source `hpo` too."""
    recipe = load_recipe(recipe_file, overrides, inputs=False)
    paths = {key: path for key, path, _ in _inputs(recipe)}
    if not (recipe.kb.format == "obo" and embedded_source(recipe.kb.source)):
        paths["kb.source"] = recipe.kb.source
    if os.path.isabs(recipe.ds_config):
        paths["ds_config"] = recipe.ds_config
    cached = [name for name in dict.fromkeys((recipe.model, recipe.tokenizer.path))
              if name and is_checkpoint(name) and name not in paths.values()]
    return paths, cached


def _angel_run(command: str) -> tuple[str, str, list[str]]:
    """(recipe, run dir, overrides) of an `angel run` command line, read by the real parser."""
    args = parser().parse_args(shlex.split(command)[1:])
    assert args.group == "run", command
    return args.recipe, args.run_dir, args.overrides


# -- KubeRay ---------------------------------------------------------------------------------------------------

def _rayjob() -> dict:
    return yaml.safe_load((LAUNCHERS / "kuberay-rayjob.yaml").read_text())


def _groups(job: dict) -> list[tuple[str, dict, dict, int]]:
    """(group, pod spec, rayStartParams, replicas) of the head and each worker group."""
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    return [("head", head["template"]["spec"], head.get("rayStartParams", {}), 1)] + [
        (g["groupName"], g["template"]["spec"], g.get("rayStartParams", {}), g["replicas"])
        for g in cluster["workerGroupSpecs"]]


def _mounts(pod: dict, container: dict) -> list[tuple[str, dict]]:
    volumes = {v["name"]: v for v in pod["volumes"]}
    return [(m["mountPath"], volumes[m["name"]]) for m in container.get("volumeMounts", [])]


def _volume_of(pod: dict, container: dict, path: str) -> dict | None:
    """The volume `path` lies on in `container` (the deepest mount above it), None when it is on none."""
    above = [(len(mount), volume) for mount, volume in _mounts(pod, container)
             if PurePosixPath(path).is_relative_to(mount)]
    return max(above, key=lambda found: found[0])[1] if above else None


def _unreachable(job: dict, paths: dict[str, str], cached: list[str]) -> list[str]:
    """What a Ray container of the job cannot read: each path must be absolute and on a volume that
    outlives the pod (not an emptyDir); a name of the Hugging Face cache needs HF_HOME on one."""
    missing = []
    for group, pod, _, _ in _groups(job):
        for container in pod["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            wanted = {**paths, **({f"HF_HOME (for {', '.join(cached)})": env.get("HF_HOME", "")} if cached else {})}
            for what, path in wanted.items():
                volume = _volume_of(pod, container, path) if os.path.isabs(path) else None
                if volume is None or "emptyDir" in volume:
                    missing.append(f"{group}/{container['name']}: {what} {path!r}")
    return missing


def _recipe_behind(job: dict, path: str) -> Path:
    """The checkout's recipe file a ConfigMap serves at `path` (created with --from-file=launchers/recipes/X)."""
    _, pod, _, _ = _groups(job)[0]
    volume = _volume_of(pod, pod["containers"][0], path)
    assert volume is not None and "configMap" in volume, f"the recipe {path} is on no ConfigMap"
    return LAUNCHERS / "recipes" / PurePosixPath(path).name


def test_kuberay_job_mounts_every_path_its_recipe_reads_in_every_pod():
    job = _rayjob()
    recipe, run_dir, overrides = _angel_run(job["spec"]["entrypoint"])
    local = _recipe_behind(job, recipe)
    paths, cached = _reads(local, overrides)
    assert paths["kb.source"] == "/kb/META" and cached == ["facebook/bart-large"]  # the job's own override
    everything = {"recipe": recipe, "run dir": run_dir, **paths}
    assert _unreachable(job, everything, cached) == []
    # One run directory: the same claim in every pod.
    claims = {json.dumps(_volume_of(pod, c, run_dir)) for _, pod, _, _ in _groups(job) for c in pod["containers"]}
    assert len(claims) == 1 and "persistentVolumeClaim" in json.loads(claims.pop())

    # The check fails where a pod could not read: a benchmark file on no volume, the cache unnamed,
    # a run directory in the pod's own memory.
    paths, cached = _reads(local, [*overrides, "benchmark.train=/data/ncbi/train.txt"])
    assert _unreachable(job, {**everything, **paths}, cached) == [
        f"{group}: benchmark.train '/data/ncbi/train.txt'" for group in ("head/ray-head", "gpu/ray-worker")]
    for _, pod, _, _ in _groups(job):
        pod["containers"][0]["env"] = []
    assert len(_unreachable(job, everything, cached)) == 2
    assert len(_unreachable(_rayjob(), {"run dir": "/dev/shm/run"}, [])) == 2


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (64Gi, 8, 500m) as a number."""
    value = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40), ("m", 1e-3),
                           ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if value.endswith(suffix):
            return float(value[:-len(suffix)]) * factor
    return float(value)


def test_kuberay_pods_ask_for_gpus_and_a_memory_backed_shm_and_hold_the_recipe():
    from angel_dist.train.launch import hostable_workers

    job = _rayjob()
    nodes = []
    for group, pod, params, replicas in _groups(job):
        (container,) = pod["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], group  # Kubernetes refuses unequal GPU ones
        limits = {key: _quantity(v) for key, v in resources["limits"].items()}
        gpus = limits.get("nvidia.com/gpu", 0)
        # GPU work only on the workers; the head tells Ray it has none.
        assert (gpus > 0) == (group != "head") and (group != "head" or params["num-gpus"] == "0")
        shm = _volume_of(pod, container, "/dev/shm")
        assert shm is not None and shm["emptyDir"]["medium"] == "Memory"
        assert [mount for mount, volume in _mounts(pod, container) if volume is shm] == ["/dev/shm"]
        size = _quantity(shm["emptyDir"]["sizeLimit"])
        # Ray puts its object store in /dev/shm only where it fits; the tmpfs counts against the pod's memory.
        assert int(params["object-store-memory"]) < size < limits["memory"], group
        nodes += [{"Alive": True, "Resources": {"CPU": limits["cpu"], "GPU": gpus}}] * replicas

    recipe, _, overrides = _angel_run(job["spec"]["entrypoint"])
    r = load_recipe(_recipe_behind(job, recipe), overrides, inputs=False)
    ranks = r.workers[-1] if isinstance(r.workers, list) else r.workers
    assert r.gpus_per_worker > 0 and r.mine.gpus_per_actor > 0
    assert hostable_workers({"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}, r.placement, nodes) >= ranks
    assert hostable_workers({"CPU": r.mine.cpus_per_actor, "GPU": r.mine.gpus_per_actor}, r.mine.placement,
                            nodes) >= r.mine.actors


# -- stand-ins for srun, scontrol, hostname and ray -------------------------------------------------------------

# Each appends what it was asked (and the token it saw) to $STUB_LOG as one JSON line.
_STUB = f"#!{sys.executable}\n" + r'''
import json, os, sys, time
name, argv, env = os.path.basename(sys.argv[0]), sys.argv[1:], os.environ
def log(**event):
    with open(env["STUB_LOG"], "a") as f:
        f.write(json.dumps({"tool": name, "argv": argv, "node": env.get("STUB_NODE"),
                            "token": env.get("RAY_AUTH_TOKEN"), "mode": env.get("RAY_AUTH_MODE"), **event}) + "\n")
hosts = env.get("STUB_HOSTS", "").split()
if name == "scontrol":  # show hostnames LIST
    print("\n".join(hosts))
elif name == "hostname":  # --ip-address on the node srun runs it on
    print(f"10.0.0.{hosts.index(env['STUB_NODE']) + 1} fe80::1")
elif name == "srun":  # srun [OPTIONS] -w NODE COMMAND...: COMMAND on NODE
    rest = list(argv)
    while rest[0].startswith("-"):
        node = rest[1] if rest[0] == "-w" else None
        rest = rest[2:] if rest[0] == "-w" else rest[1:]
        env = {**env, "STUB_NODE": node} if node else env
    os.execvpe(rest[0], rest, env)
elif argv[0] == "start":  # `ray start ... --block`: runs until the job ends, unless it fails
    log()
    if env["STUB_NODE"] in env.get("STUB_FAILING", "").split():
        sys.exit(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)
    time.sleep(60)
elif argv[0] == "status":  # the cluster's state, from $STUB_STATUS: one [nodes, gpus] (or null) a poll
    with open(env["STUB_LOG"]) as f:
        polls = sum(json.loads(line)["argv"][0] == "status" for line in f)
    states = json.loads(env["STUB_STATUS"])
    state = states[min(polls, len(states) - 1)]
    log(reported=state)
    if state is None:  # as Ray 2.60 answers while the head starts
        print("No cluster status. It may take a few seconds for the Ray internal services to start up.")
    else:
        nodes, gpus = state
        print("======== Autoscaler status: 2026-12-06 04:30:14.391991 ========\nNode status\n"
              + "-" * 63 + "\nActive:\n" + "".join(f" 1 node_{i:056x}\n" for i in range(nodes))
              + "Pending:\n (no pending nodes)\nRecent failures:\n (no failures)\n\nResources\n" + "-" * 63
              + f"\nTotal Usage:\n 0.0/{16.0 * nodes} CPU\n 0.0/{float(gpus)} GPU\n 0B/45.51GiB memory\n"
              + " 0B/300.00MiB object_store_memory\n\nFrom request_resources:\n (none)\nPending Demands:\n"
              + " (no resource demands)\n")
elif argv[:2] == ["list", "nodes"]:  # the live nodes, $STUB_NODES of them; unset: the cluster does not answer
    log()
    if "STUB_NODES" not in env:
        sys.exit("Error: Failed to make request to the API server.")
    print(json.dumps([{"node_id": f"{i:056x}", "state": "ALIVE"} for i in range(int(env["STUB_NODES"]))]))
elif argv[:2] == ["job", "submit"]:
    log()
    print("Job 'raysubmit_stub' succeeded")
else:
    sys.exit(f"stand-in {name}: unexpected {argv}")
'''


@pytest.fixture
def stubs(tmp_path):
    """A PATH with the stand-ins first, and a function reading what they were asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "scontrol", "hostname", "ray"):
        (bin_dir / tool).write_text(_STUB)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.touch()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RAY_", "SLURM_", "STUB_")) and key not in ("RUN_DIR",)}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(log))

    def calls(tool: str = "ray", command: str | None = None) -> list[dict]:
        events = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in events if e["tool"] == tool and (command is None or e["argv"][0] == command)]

    return env, calls


def _run(argv: list[str], env: dict, tmp_path: Path, settled=lambda: True) -> tuple[int, str, str]:
    """Run a launcher in its own session; once `settled()` (what it started in the background has
    logged), end whatever it left running (the `ray start` stand-ins)."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=o, stderr=e, start_new_session=True)
        try:
            rc = proc.wait(timeout=120)
            for _ in range(600):
                if settled():
                    break
                time.sleep(0.05)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, out.read_text(), err.read_text()


def _submitted(calls) -> list[str]:
    (submit,) = calls("ray", "job")
    return submit["argv"]


# -- Slurm -----------------------------------------------------------------------------------------------------

def _sbatch_directives() -> dict[str, str]:
    lines = (LAUNCHERS / "slurm-ray.sbatch").read_text().splitlines()
    return dict(line.removeprefix("#SBATCH ").partition("=")[::2] for line in lines if line.startswith("#SBATCH "))


def test_slurm_job_asks_for_gpus_per_node_and_all_memory():
    directives = _sbatch_directives()
    assert int(directives["--gpus-per-node"]) > 0 and directives["--mem"] == "0"
    assert "--exclusive" in directives


def _sbatch(stubs, tmp_path, states, *, gpus=4, timeout=30, failing="", recipe="launchers/recipes/umls-pretrain.yaml",
            overrides=("kb.source=/shared/umls/2024AA/META",), started=()):
    """The batch script under the stand-ins: `states` are what successive `ray status` polls report;
    it returns once the `ray start` of each node in `started` has been seen."""
    env, calls = stubs
    env = {**env, "STUB_HOSTS": "n1 n2", "STUB_STATUS": json.dumps(states), "STUB_FAILING": failing,
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": str(gpus), "SLURM_CPUS_ON_NODE": "16",
           "SLURM_SUBMIT_DIR": str(ROOT), "RAY_AUTH_TOKEN": "the-token", "RAY_START_TIMEOUT": str(timeout),
           "RAY_START_POLL": "0.1"}
    return _run(["bash", str(LAUNCHERS / "slurm-ray.sbatch"), recipe, *overrides], env, tmp_path,
                lambda: set(started) <= {e["node"] for e in calls("ray", "start")})


def _upload_misses(submit_argv: list[str], paths: dict[str, str]) -> list[str]:
    """Paths a job's processes on any node would not find: relative ones that are not in the upload
    (the working dir `ray job submit` sends, less its excludes). Absolute ones are the user's to share."""
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(ROOT, json.loads(submit_argv[submit_argv.index("--runtime-env-json") + 1])["excludes"])
    return [f"{what} {path!r}" for what, path in paths.items() if not os.path.isabs(path) and
            (not (ROOT / path).resolve().is_relative_to(ROOT) or not (ROOT / path).exists() or excluded(ROOT / path))]


def test_slurm_job_starts_workers_once_the_head_answers_and_submits_once_all_have_registered(stubs, tmp_path):
    _, calls = stubs
    # The head not up yet, then the head alone, then (workers started) still the head, then both nodes.
    rc, out, err = _sbatch(stubs, tmp_path, [None, [1, 4], [1, 4], [2, 8]], started=("n1", "n2"))
    assert rc == 0, err
    polls = calls("ray", "status")
    assert [p["reported"] for p in polls] == [None, [1, 4], [1, 4], [2, 8]]
    assert all(p["argv"] == ["status", "--address", "10.0.0.1:6379"] for p in polls)
    assert {(p["mode"], p["token"]) for p in polls} == {("token", "the-token")}  # `ray status` carries the token
    # The worker starts once a poll saw the head; the job is submitted once a poll saw every node.
    order = [(e["argv"][0], e["node"], e.get("reported")) for e in calls()]
    assert order.index(("start", "n2", None)) > order.index(("status", None, [1, 4]))
    assert [event[0] for event in order if event[0] != "start"][-2:] == ["status", "job"]
    starts = {e["node"]: e["argv"] for e in calls("ray", "start")}
    assert "--head" in starts["n1"] and starts["n2"][starts["n2"].index("--address") + 1] == "10.0.0.1:6379"
    assert all(argv[argv.index("--num-gpus") + 1] == "4" for argv in starts.values())

    submit = _submitted(calls)
    assert submit[submit.index("--address") + 1] == "http://10.0.0.1:8265"
    recipe, run_dir, overrides = _angel_run(" ".join(shlex.quote(a) for a in submit[submit.index("--") + 1:]))
    assert run_dir == str(ROOT / "runs" / "umls-pretrain")  # absolute: the submit directory's runs/
    paths, _ = _reads(ROOT / recipe, overrides)
    assert _upload_misses(submit, {"recipe": recipe, "run dir": run_dir, **paths}) == []
    # The check finds a relative input outside the upload.
    assert _upload_misses(submit, {"kb.source": "../elsewhere/kb.txt"}) == ["kb.source '../elsewhere/kb.txt'"]


@pytest.mark.parametrize("states, expected", [
    ([None], "0 of 1 Ray nodes (n1) and 0 of 4 GPUs"),  # the head never answers
    ([[1, 4]], "1 of 2 Ray nodes (n1 n2) and 4 of 8 GPUs (4 a node) have registered with the head at "
               "10.0.0.1:6379 (nodes missing: 1, GPUs missing: 4)"),
    ([[1, 4], [2, 4]], "2 of 2 Ray nodes (n1 n2) and 4 of 8 GPUs (4 a node) have registered with the head at "
                       "10.0.0.1:6379 (nodes missing: 0, GPUs missing: 4)"),  # a node's GPUs unseen
])
def test_slurm_job_stops_when_the_cluster_is_not_complete_in_time(stubs, tmp_path, states, expected):
    _, calls = stubs
    rc, out, err = _sbatch(stubs, tmp_path, states, timeout=1)
    assert rc == 1 and f"slurm-ray.sbatch: after 1 s, {expected}" in err and "RAY_START_TIMEOUT" in err
    assert calls("ray", "job") == []
    if states == [None]:
        assert "`ray status` said: No cluster status." in err
        assert "n2" not in [s["node"] for s in calls("ray", "start")]  # no worker without a head


def test_slurm_job_stops_at_once_when_a_node_fails_to_start(stubs, tmp_path):
    _, calls = stubs
    rc, out, err = _sbatch(stubs, tmp_path, [[1, 4]], timeout=600, failing="n2")
    assert rc == 1 and "slurm-ray.sbatch: the Ray node on n2 exited" in err
    assert calls("ray", "job") == []


# -- submit.sh -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("live, run_dir, refused", [
    (2, None, "has 2 live nodes"), (None, None, "could not be asked how many nodes it has"),
    (1, None, None), (2, "/shared/runs/demo", None), (1, "/shared/runs/demo", None)])
def test_submit_refuses_a_relative_run_dir_where_the_cluster_has_several_nodes(stubs, tmp_path, live, run_dir,
                                                                                 refused):
    env, calls = stubs
    env = {**env, "RAY_ADDRESS": "http://10.0.0.1:8265", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "the-token",
           **({"STUB_NODES": str(live)} if live else {}), **({"RUN_DIR": run_dir} if run_dir else {})}
    rc, out, err = _run(["bash", str(LAUNCHERS / "submit.sh"), "launchers/recipes/demo-hpo.yaml"], env, tmp_path)
    if run_dir is None:  # asked the cluster it submits to, with the token
        (asked,) = calls("ray", "list")
        assert asked["argv"][asked["argv"].index("--address") + 1] == "http://10.0.0.1:8265"
        assert (asked["mode"], asked["token"]) == ("token", "the-token")
    if refused:
        assert rc == 2 and calls("ray", "job") == []
        assert f"RUN_DIR=runs/demo-hpo is relative and the cluster at http://10.0.0.1:8265 {refused}" in err
        assert "each node would write the run into its own copy" in err and "absolute path" in err
    else:
        assert rc == 0, err
        assert run_dir is None or calls("ray", "list") == []  # an absolute one needs no question
        submit = _submitted(calls)
        assert submit[submit.index("--run-dir") + 1] == (run_dir or "runs/demo-hpo")
