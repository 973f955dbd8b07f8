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
