import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from angel_dist.cli import main
from test_kb_umls import conso, sty, write_meta


def test_cli_kb_tokenizer_trie_round(tmp_path, capsys):
    rows = [conso("C1", "A1", "Fever", preferred=True), conso("C1", "A2", "Pyrexia"),
            conso("C2", "A3", "Heart failure"), conso("C2", "A4", "Cardiac failure")]
    meta = write_meta(tmp_path, rows, [sty("C1", "T184", "A2.2.2"), sty("C2", "T047", "B2.2.1.2.1")])
    kb = tmp_path / "kb.parquet"
    assert main(["kb", "build", "--format", "umls", str(meta), "--out", str(kb), "--seeds", "T033,T047",
                 "--quiet"]) == 0
    assert "2 concepts, 4 names" in capsys.readouterr().out
    assert main(["kb", "stats", str(kb), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["concepts"], stats["names"], stats["names_per_concept"]["max"]) == (2, 4, 2)
    assert main(["kb", "export-target-kb", str(kb), "--out", str(tmp_path / "target_kb.json")]) == 0
    assert json.loads((tmp_path / "target_kb.json").read_text()) == {
        "C1": ["fever", "pyrexia"], "C2": ["heart failure", "cardiac failure"]}
    capsys.readouterr()
    assert main(["tokenizer", "train", str(kb), "--vocab-size", "300", "--min-frequency", "1",
                 "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    assert main(["trie", "build", str(kb), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "trie"),
                 "--quiet"]) == 0
    assert "4 names" in capsys.readouterr().out


def test_cli_bad_input_exit_code_and_message(tmp_path, capsys):
    meta = write_meta(tmp_path, [conso("C1", "A1", "Fever"), "C1|ENG|broken|"], [sty("C1", "T184", "A2.2.2")])
    assert main(["kb", "build", "--format", "umls", str(meta), "--out", str(tmp_path / "kb.parquet"),
                 "--quiet"]) == 2
    assert "MRCONSO.RRF:2:" in capsys.readouterr().err
    assert not (tmp_path / "kb.parquet").exists()
    assert main(["kb", "build", "--format", "umls", str(meta), "--out", str(tmp_path / "kb.parquet"),
                 "--quiet", "--on-bad-input", "skip", "--seeds", "T184"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 bad input record" in captured.err and "1 concepts, 1 names" in captured.out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "angel_dist.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "kb" in out.stdout and "trie" in out.stdout


def test_cli_empty_inputs_stop_unless_allowed_and_out_may_not_be_a_directory(tmp_path, capsys):
    medic = tmp_path / "medic.txt"
    medic.write_text("D1||Fever|Pyrexia\nD2||Heart failure\n")
    kb = tmp_path / "kb.parquet"
    assert main(["kb", "build", "--format", "medic", str(medic), "--out", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err
    assert main(["kb", "build", "--format", "medic", str(medic), "--out", str(kb)]) == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["kb", "build", "--format", "medic", str(empty), "--out", str(tmp_path / "e.parquet")]) == 2
    assert "empty.txt: no concepts read" in capsys.readouterr().err and not (tmp_path / "e.parquet").exists()
    assert main(["kb", "build", "--format", "medic", str(empty), "--out", str(tmp_path / "e.parquet"),
                 "--allow-empty"]) == 0
    assert "0 concepts" in capsys.readouterr().out
    assert main(["tokenizer", "train", str(kb), "--vocab-size", "280", "--min-frequency", "1",
                 "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    pubtator = tmp_path / "split.txt"
    pubtator.write_text("1|t|Fever.\n1\t0\t5\tFever\tChemical\tD1\n")
    out = tmp_path / "shards"
    assert main(["corpus", "mentions", "--pubtator", str(pubtator), "--kb", str(kb), "--tokenizer",
                 str(tmp_path / "tok"), "--out", str(out), "--entity-type", "Disease", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "split.txt: no examples (" in err and "other_entity_type 1" in err and "--allow-empty" in err
    assert not out.exists()


# -- every command line the README and the launchers show parses with the real parser --------------------------

ROOT = Path(__file__).resolve().parents[1]
_SHELL_VALUES = {'"$recipe"': "launchers/recipes/demo-hpo.yaml", '"$run_dir"': "runs/demo", '"$@"': "kb.limit=10"}


def _commands(text: str, usage_comments: bool = False) -> list[str]:
    """`angel ...` invocations in one (continuation-joined) line: at its start, after `&&`, a pipe, `--`, a
    `# =` comment (or any comment, in launchers, whose comments show usage), a YAML key or a backquote; up
    to a comment, `&&`, a pipe or a backquote."""
    for var, value in _SHELL_VALUES.items():
        text = text.replace(var, value)
    comment = r"#\s*=?" if usage_comments else r"#\s*="
    return [m.group(1).strip() for m in re.finditer(rf"(?:^|&&|\||--|{comment}|:|`)\s*(angel\s+[a-z].*?)"
                                                     r"(?=\s+#|\s+&&|\s+\||`|$)", text)]


def _readme_command_lines() -> tuple[list[str], list[str]]:
    """(command lines of the README's code blocks, inline code spans that are command lines)."""
    blocks, spans, inside, pending = [], [], False, ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                blocks.append(pending)
                pending = ""
        else:
            # An inline span with an option is a command line; `angel run` alone names a command.
            spans += [s for s in re.findall(r"`(angel [^`]+)`", line) if " --" in s]
    return blocks, spans


def _launcher_lines() -> list[str]:
    return [line for path in sorted((ROOT / "launchers").rglob("*")) if path.is_file()
            for line in path.read_text().splitlines() if re.search(r"\bangel\s+[a-z]", line)]


def _argv_variants(command: str) -> list[list[str]]:
    """The words after `angel`; `[--opt X]` optional parts once left out and once given (the first choice of
    `a|b`, 2 for a count `N`). A bracket inside a word is a value (`'seeds=[0,1,2]'`), not an optional part."""
    without = re.sub(r"\s+\[[^\]]*\]", "", command)
    with_ = re.sub(r"(?<=\s)\[([^\]]*)\]", lambda m: re.sub(r"(\S+)\|\S+", r"\1", m.group(1).replace(" N", " 2")), command)
    return [shlex.split(c)[1:] for c in dict.fromkeys((without, with_))]


def test_every_command_line_of_the_readme_and_the_launchers_parses():
    from angel_dist.cli import parser
    from angel_dist.pipeline import load_recipe

    blocks, spans = _readme_command_lines()
    # A comment in a code block is prose (`# angel serve batched vs ...`) unless it shows a command (`# = angel ...`).
    block_lines = [line for line in blocks if re.search(r"\bangel\s+[a-z]", re.sub(r"\s#(?!\s*=).*$", "", line))]
    launcher_lines = _launcher_lines()
    commands = []
    for where, lines in (("README code block", block_lines), ("launchers", launcher_lines)):
        for line in lines:
            found = _commands(line, usage_comments=where == "launchers")
            assert found, f"{where}: no `angel` command recognized in {line!r}"  # never skipped silently
            commands += found
    commands += spans
    # What the README and launchers hold today (more is fine, fewer means lines went unseen).
    assert len(block_lines) >= 29 and len(spans) >= 4 and len(launcher_lines) >= 4 and len(commands) >= 38
    for command in commands:
        for argv in _argv_variants(command):
            try:
                args = parser().parse_args(argv)
            except SystemExit:
                raise AssertionError(f"does not parse: {command!r}") from None
            if args.group == "run" and (ROOT / args.recipe).exists():
                load_recipe(ROOT / args.recipe, args.overrides, inputs=False)  # the overrides name real keys
    assert any(c.startswith("angel run") and "=" in c.split("--run-dir")[-1] for c in commands)


def test_angel_train_finds_ds_configs_from_any_working_directory(tmp_path, monkeypatch):
    from angel_dist.train import TrainConfig
    from angel_dist.train.launch import resolved

    monkeypatch.chdir(tmp_path)
    cfg = resolved(TrainConfig(data=["shards/x"], tokenizer="tok", out="runs/r"))  # `angel train`'s defaults
    assert Path(cfg.ds_config) == ROOT / "ds_configs" / "zero2.json"
    assert (Path(cfg.data[0]), Path(cfg.out), cfg.tokenizer) == (tmp_path / "shards/x", tmp_path / "runs/r", "tok")
    cfg = resolved(TrainConfig(data=["x"], tokenizer="tok", ds_config="ds_configs/ddp.json"))
    assert Path(cfg.ds_config) == ROOT / "ds_configs" / "ddp.json"
    with pytest.raises(ValueError, match="model tiny is a preset, built with the tokenizer it is given"):
        resolved(TrainConfig(data=["x"]))


def test_status_shows_the_running_training_stage_step_and_eta(tmp_path, capsys):
    from angel_dist.pipeline import load_recipe
    from angel_dist.pipeline.run import train_dir
    from angel_dist.pipeline.state import RunState
    from angel_dist.train.progress import ProgressWriter

    recipe = load_recipe(None)
    state = RunState(tmp_path, {}, recipe.fingerprint())
    state.run("kb", lambda: {"concepts": 5})
    state.state["stages"]["pretrain"] = {"status": "running", "outputs": {}, "order": 1}
    state._write()
    writer = ProgressWriter(train_dir(tmp_path, "pretrain"), 0, 40, 2, every=0.0)
    writer.add(torch.tensor(2.5), 100)
    writer.step(10)
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kb" in out and "concepts=5" in out
    assert re.search(r"pretrain\s+running\s+-\s+training: step 10/40 \(25%\), loss 2\.5000, [\d,]+ tokens/s, ETA", out)


def test_progress_lines_are_bounded_however_fast_the_steps(tmp_path, capsys):
    from angel_dist.train.progress import ProgressTail, ProgressWriter

    writer = ProgressWriter(tmp_path, 0, 1000, 1, every=0.4)
    with ProgressTail(tmp_path, "train t", every=0.4):
        start = time.monotonic()
        for step in range(1, 1001):  # 1000 steps in ~2 s
            writer.add(torch.tensor(1.0), 10)
            time.sleep(0.002)
            writer.step(step)
        seconds = time.monotonic() - start
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("[angel] train t: step ") for line in lines)
    assert 2 <= len(lines) <= seconds / 0.4 + 2  # no more than one a period, and the last one at the end
    assert lines[-1].startswith("[angel] train t: step 1000/1000 (100%)")


def test_workers_a_cluster_holds_count_live_nodes_and_the_placement():
    from angel_dist.train.launch import hostable_workers

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0, "train": 1.0}},
             {"Alive": True, "Resources": {"CPU": 2.0, "train": 2.0}},
             {"Alive": False, "Resources": {"CPU": 8.0, "train": 8.0}},  # a lost node holds nothing
             {"Alive": True, "Resources": {"CPU": 8.0}}]  # no `train`
    need = {"CPU": 1.0, "train": 1.0}
    assert hostable_workers(need, "PACK", nodes) == 3
    assert hostable_workers(need, "STRICT_SPREAD", nodes) == 2
    assert hostable_workers(need, "STRICT_PACK", nodes) == 2
    assert hostable_workers({"CPU": 3.0}, "SPREAD", nodes) == 1 + 2
    assert hostable_workers({"CPU": 1.0, "GPU": 1.0}, "PACK", nodes) == 0


def test_submit_uploads_the_whole_package_and_leaves_out_data_and_runs(tmp_path):
    """launchers/submit.sh, with a stand-in `ray` that records its arguments: the working directory
    it uploads, filtered as Ray filters it, keeps every file of the package (a bare `shards/`
    exclude dropped angel_dist/shards, which broke the job wherever the upload came first on
    sys.path) and leaves out the top-level shards/ and runs/."""
    from ray._private.runtime_env.packaging import _get_excludes

    (tmp_path / "ray").write_text(f'#!/bin/sh\n{sys.executable} -c "import json, sys; '
                                  f'print(json.dumps(sys.argv[1:]))" "$@"\n')
    (tmp_path / "ray").chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "launchers" / "submit.sh"), "launchers/recipes/demo-hpo.yaml"],
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
                               "RUN_DIR": str(tmp_path / "run")},  # relative, it would ask the stand-in for nodes
                          capture_output=True, text=True, check=True)
    argv = json.loads(done.stdout)
    assert argv[:2] == ["job", "submit"] and argv[argv.index("--working-dir") + 1] == "."
    excluded = _get_excludes(ROOT, json.loads(argv[argv.index("--runtime-env-json") + 1])["excludes"])
    package = [p for p in (ROOT / "angel_dist").rglob("*.py") if "__pycache__" not in p.parts]
    assert (ROOT / "angel_dist" / "shards" / "reader.py") in package
    assert [p for p in package if excluded(p)] == []
    assert excluded(ROOT / "shards" / "pretrain-000000.tar") and excluded(ROOT / "runs" / "demo" / "run.json")
