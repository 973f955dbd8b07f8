"""`angel preflight` on CPU: the demo recipe passes every check through the real paths (Ray Train
with a save and a resume, the search actors, DPO); a failing check exits 2 naming it."""

import json
import math
from pathlib import Path

import pytest

from angel_dist.cli import main
from angel_dist.preflight import CHECKS

DEMO = Path(__file__).resolve().parents[1] / "launchers" / "recipes" / "demo-hpo.yaml"


def test_the_demo_recipe_passes_every_check(ray_local, tmp_path, capsys):
    code = main(["preflight", str(DEMO), "--json", "--quiet", "--work-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)  # stdout holds the report alone
    assert code == 0 and report["passed"]
    assert [(c["name"], c["status"]) for c in report["checks"]] == [(name, "passed") for name in CHECKS]
    facts = {c["name"]: c["facts"] for c in report["checks"]}
    assert facts["versions"]["cuda_available"] is False and facts["versions"]["bf16"] is None
    training = facts["training"]
    assert training["workers"] == 1
    assert training["saved_step"] == 8 and training["resumed_from"] == 8 and training["last_step"] == 12
    assert math.isfinite(training["loss_last"])
    assert facts["throughput"]["tokens_per_s"] > 0 and facts["throughput"]["mfu"] is None
    assert facts["mining"]["actors"] == 2 and facts["mining"]["pairs"] > 0
    assert facts["dpo"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert facts["search"]["mentions_per_s"] > 0 and facts["search"]["mentions"] == facts["mining"]["inputs"]
    assert (tmp_path / "preflight" / "train" / "checkpoints" / "step-00000012").is_dir()  # --work-dir is kept


def test_a_failed_check_exits_2_naming_it_and_skips_the_rest(tmp_path, capsys):
    code = main(["preflight", str(DEMO), "ds_config=ds_configs/none.json", "--quiet", "--work-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "angel: error: preflight check 'recipe' failed" in err and "ds_config" in err
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:-1]}
    assert lines == {"versions": "passed", "recipe": "failed", **{name: "skipped" for name in CHECKS[2:]}}
