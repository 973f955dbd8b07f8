import json
import subprocess
import sys

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
