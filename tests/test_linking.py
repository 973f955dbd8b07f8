"""Using a trained linker: the bundle (export, Linker.from_bundle), `angel link` (several texts,
--input, stdin, --json), `angel annotate` (PubTator and JSONL, acc@k, rerun, killed actor) and
`angel serve` (valid and batched requests, 1000 malformed ones, loopback only)."""

import http.client
import io
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from angel_dist.bundle import read_bundle
from angel_dist.cli import main
from angel_dist.corpus.pubtator import Document, Mention, format_pubtator, read_pubtator
from angel_dist.decode.linker import Linker, text_document
from angel_dist.evaluate.metrics import accuracy
from angel_dist.kb.build import KbBuildConfig, build_kb
from angel_dist.kb.table import read_kb, read_kb_meta, write_kb
from angel_dist.mine.work import FAULT_ENV
from angel_dist.serve.requests import MAX_BODY_BYTES
from angel_dist.model import load_model, save_model
from angel_dist.tokenizer import load_tokenizer, train_tokenizer
from angel_dist.trie.build import build_trie
from conftest import free_port

TEXTS = ["the child had START kidney cysts END at birth", "START fever END", "recurrent START urinary infections END ."]


def _documents(kb) -> list[Document]:
    """Two mentions for each of the first 15 concepts, in a title and an abstract sentence; every
    third abstract mention unlinked (-1), so gold ids cover part of the input."""
    docs = []
    for i, (cui, names) in enumerate(zip(kb["cui"].to_pylist()[:15], kb["names"].to_pylist())):
        a, b = names[0], names[-1]
        title, abstract = f"The patient had {a}.", f"Later {b} was seen. Nothing else."
        start = len(title) + 1 + len("Later ")
        docs.append(Document(f"d{i}", title, abstract, [Mention(16, 16 + len(a), a, "Phenotype", cui, 0),
                                                         Mention(start, start + len(b), b, "Phenotype",
                                                                 cui if i % 3 else "-1", 0)]))
    return docs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    from angel_dist.pipeline import load_recipe
    from angel_dist.pipeline.run import Pipeline

    d = tmp_path_factory.mktemp("linking")
    build_kb(KbBuildConfig(format="obo", source="hpo", out=str(d / "hpo.parquet")), progress=False)
    write_kb(read_kb(d / "hpo.parquet").slice(0, 40), d / "kb.parquet", read_kb_meta(d / "hpo.parquet"))
    train_tokenizer(d / "kb.parquet", 600, d / "tok", progress=False)
    tok = load_tokenizer(d / "tok")
    build_trie(d / "kb.parquet", tok, d / "trie", progress=False)
    model = load_model("tiny", tok, seed=0)
    save_model(model, tok, d / "model")
    docs = _documents(read_kb(d / "kb.parquet"))
    (d / "docs.pubtator").write_text("".join(map(format_pubtator, docs)))
    # A pipeline run whose stages are recorded by hand; its export stage is the pipeline's own.
    pipeline = Pipeline(load_recipe(None, ["name=fixture-run", "evaluate.k=2"]), d / "run", progress=False)
    pipeline.state.run("kb", lambda: {"kb": str(d / "kb.parquet"), "fingerprint": "f", "concepts": 40})
    pipeline.state.run("trie", lambda: {"trie": str(d / "trie")})
    pipeline.state.run("pretrain", lambda: {"model": str(d / "model"), "run": "", "steps": 0})
    table = {"angel": {"dev": {"mentions": 8, "acc@1": 0.125, "acc@2": 0.25}}}
    pipeline.state.run("final-eval", lambda: table)
    pipeline.state.run("export", lambda: pipeline.export(str(d / "model")))
    return d


@pytest.fixture(scope="module")
def linker(setup):
    return Linker(setup / "model", setup / "trie", beams=5)


def _names(found):
    return [[[p.name for p in mention] for mention in doc] for doc in found]


# -- the bundle --------------------------------------------------------------------------------

def test_pipeline_export_stage_and_angel_export_write_the_same_bundle(setup, tmp_path, capsys):
    bundle = setup / "run" / "model"
    manifest = read_bundle(bundle)
    files = {f["path"]: f for f in manifest["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json", "trie/names.parquet", "trie/offsets.npy",
            "trie/heights.npy", "README.md"} <= set(files)
    assert manifest["inputs"] == {"context": "document", "lowercase": True, "normalize_mention": True,
                                  "abbreviations": True, "max_source_tokens": 700}
    assert "the document around the mention (lowercased); the mention abbreviations expanded" in \
        (bundle / "README.md").read_text()
    assert manifest["origin"]["stage"] == "pretrain" and manifest["accuracy"]["angel"]["dev"]["acc@2"] == 0.25
    card = (bundle / "README.md").read_text()
    assert "# fixture-run" in card and "| angel | 12.50 | 25.00 |" in card and manifest["kb_fingerprint"] in card
    assert pq.read_table(bundle / "trie" / "names.parquet").equals(pq.read_table(setup / "trie" / "names.parquet"))

    assert main(["export", str(setup / "run"), "--out", str(tmp_path / "b")]) == 0
    again = read_bundle(tmp_path / "b")
    assert {f["path"]: f["sha256"] for f in again["files"] if f["path"] != "README.md"} == \
        {p: f["sha256"] for p, f in files.items() if p != "README.md"}
    assert main(["export", str(setup / "run"), "--out", str(tmp_path / "c"), "--trie", str(setup / "trie")]) == 2
    assert "pipeline run" in capsys.readouterr().err

    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="sha256"):
        Linker.from_bundle(damaged)
    (damaged / "trie" / "heights.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="missing or not"):
        read_bundle(damaged, verify=False)


def test_bundle_links_as_its_model_directory_and_trie(setup, linker):
    docs = _documents(read_kb(setup / "kb.parquet"))[:3]
    from_bundle = Linker.from_bundle(setup / "run" / "model", beams=5)
    a, b = linker.link_documents(docs), from_bundle.link_documents(docs)
    assert _names(a) == _names(b) and len(a) == 3 and all(len(m) == 2 for m in a)
    np.testing.assert_allclose([p.score for d in a for m in d for p in m], [p.score for d in b for m in d for p in m],
                               rtol=1e-6)


def test_training_run_export_needs_the_trie(setup, tmp_path, capsys):
    # A training run whose newest checkpoint was already exported (model_directory reuses it).
    run = tmp_path / "train-run"
    (run / "checkpoints" / "step-00000004").mkdir(parents=True)
    (run / "checkpoints" / "step-00000004" / "meta.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-00000004")
    shutil.copytree(setup / "model", run / "export" / "step-00000004")
    (run / "export" / "step-00000004" / "angel_export.json").write_text(json.dumps({"run": str(run), "checkpoint": "step-00000004"}))
    (run / "train_config.json").write_text(json.dumps({"objective": "nll", "data": [], "model": "tiny"}))
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "training run" in err and "--trie" in err
    assert not (tmp_path / "b").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--trie", str(setup / "trie")]) == 0
    manifest = read_bundle(tmp_path / "b")
    assert manifest["origin"] == {"kind": "training", "run": str(run.resolve()), "checkpoint": "step-00000004"}
    assert "Checkpoint `step-00000004` of training run" in (tmp_path / "b" / "README.md").read_text()
    assert manifest["accuracy"] is None


# -- angel link --------------------------------------------------------------------------------

def _link_json(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _assert_same_links(found: list[dict], expected: list[dict]) -> None:
    """Equal but for the scores' last bits: a batch's composition changes float rounding."""
    assert [{k: v for k, v in o.items() if k != "scores"} for o in found] == \
        [{k: v for k, v in o.items() if k != "scores"} for o in expected]
    for o, e in zip(found, expected):
        np.testing.assert_allclose(o["scores"], e["scores"], rtol=1e-5)


def test_link_several_texts_from_arguments_file_and_stdin(setup, linker, tmp_path, capsys, monkeypatch):
    bundle = str(setup / "run" / "model")
    alone = [linker.link([t])[0] for t in TEXTS]  # each text searched on its own
    assert main(["link", "--model", bundle, "--beams", "5", "--json", *TEXTS]) == 0
    out = _link_json(capsys)
    assert [o["text"] for o in out] == TEXTS
    for o, predictions in zip(out, alone):
        assert o["names"] == [p.name for p in predictions] and o["ids"] == [list(p.cuis) for p in predictions]
        np.testing.assert_allclose(o["scores"], [p.score for p in predictions], rtol=1e-5)
    assert out[0]["mention"] == "kidney cysts" and out[1] == {**out[1], "mention": "fever", "start": 0, "end": 5}

    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:2]) + "\n\n")
    assert main(["link", "--model", bundle, "--beams", "5", "--json", "--input", str(tmp_path / "texts.txt")]) == 0
    _assert_same_links(_link_json(capsys), out[:2])
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[2] + "\n"))
    assert main(["link", "--model", bundle, "--beams", "5", "--json"]) == 0
    _assert_same_links(_link_json(capsys), out[2:])

    assert main(["link", "--model", bundle, "--beams", "3", TEXTS[0], TEXTS[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    kb_names = set(pq.read_table(setup / "trie" / "names.parquet")["name"].to_pylist())
    assert lines[0] == TEXTS[0] and lines[4] == TEXTS[1] and len(lines) == 8
    rows = [line.split(None, 2) for line in lines[1:4]]
    assert [int(r[0]) for r in rows] == [1, 2, 3] and all(r[2].rsplit("  [", 1)[0] in kb_names for r in rows)

    assert main(["link", "--model", bundle, "no mention here"]) == 2
    assert "START mention END" in capsys.readouterr().err
    assert main(["link", "--model", str(setup / "model"), TEXTS[0]]) == 2  # a plain model directory needs --trie
    assert "--trie" in capsys.readouterr().err
    assert main(["link", "--model", str(setup / "model"), "--trie", str(setup / "trie"), TEXTS[0]]) == 0


def test_an_explicit_trie_must_match_the_bundles_tokenizer(setup, tmp_path, capsys):
    train_tokenizer(setup / "kb.parquet", 500, tmp_path / "tok", progress=False)
    build_trie(setup / "kb.parquet", load_tokenizer(tmp_path / "tok"), tmp_path / "trie", progress=False)
    assert main(["link", "--model", str(setup / "run" / "model"), "--trie", str(tmp_path / "trie"), TEXTS[0]]) == 2
    assert "was built with tokenizer" in capsys.readouterr().err


# -- angel annotate ----------------------------------------------------------------------------

def _annotate(setup, out, *extra):
    return main(["annotate", "--model", str(setup / "run" / "model"), "--input", str(setup / "docs.pubtator"),
                 "--out", str(out), "--actors", "2", "--shards", "3", "--k", "3", "--beams", "5", "--quiet", *extra])


@pytest.fixture(scope="module")
def annotated(setup):
    """An annotation during which the actor on shard 1 dies once it has searched, before it
    writes: Ray restarts it and the shard is redone (the tests check the whole output)."""
    out = setup / "annotated"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, "1:1")
        assert _annotate(setup, out) == 0
    assert (out / "parts" / ".fault-injected-1-1").exists()
    return out


def test_annotate_pubtator_writes_ids_topk_and_acc(setup, annotated, linker):
    docs = list(read_pubtator(setup / "docs.pubtator"))
    records = [json.loads(line) for line in (annotated / "annotations.jsonl").read_text().splitlines()]
    assert len(records) == sum(len(d.mentions) for d in docs) == 30
    found = linker.link_documents(docs)  # the same mentions linked in this process
    assert [r["names"] for r in records] == [[p.name for p in m[:3]] for d in found for m in d]
    assert [(r["document"], r["index"], r["start"], r["end"]) for r in records] == \
        [(d.pmid, i, m.start, m.end) for d in docs for i, m in enumerate(d.mentions)]
    assert all(len(r["ids"]) == len(r["scores"]) == 3 for r in records)
    written = list(read_pubtator(annotated / "annotations.pubtator"))
    assert [(d.title, d.abstract) for d in written] == [(d.title, d.abstract) for d in docs]
    assert [m.ids for d in written for m in d.mentions] == ["|".join(r["ids"][0]) for r in records]
    assert [m.text for d in written for m in d.mentions] == [m.text for d in docs for m in d.mentions]

    summary = json.loads((annotated / "summary.json").read_text())
    gold = [{"cui_label": r["gold"], "cui_result": r["ids"]} for r in records if "gold" in r]
    assert len(gold) == 15 + 10  # the unlinked (-1) third of the abstract mentions carry no gold
    kb_cuis = {c for cuis in pq.read_table(setup / "trie" / "names.parquet")["cuis"].to_pylist() for c in cuis}
    assert summary["gold"] == accuracy(gold, 3, kb_cuis) and summary["gold"]["gold_missing_from_kb"] == 0
    assert summary["mentions"] == 30 and summary["shards_written"] == 3


def test_annotate_jsonl_input_links_the_same_and_bad_lines_name_file_and_line(setup, annotated, tmp_path, capsys):
    docs = list(read_pubtator(setup / "docs.pubtator"))
    lines = [json.dumps({"id": d.pmid, "text": d.text, "spans": [[m.start, m.end] for m in d.mentions],
                         "ids": [m.ids for m in d.mentions]}) for d in docs]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["annotate", "--model", str(setup / "run" / "model"), "--input", str(tmp_path / "docs.jsonl"),
                 "--format", "jsonl", "--out", str(tmp_path / "out"), "--k", "3", "--beams", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "acc@1" in printed and "mentions 25" in printed
    mine = [json.loads(line) for line in (tmp_path / "out" / "annotations.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (annotated / "annotations.jsonl").read_text().splitlines()]
    assert [(r["document"], r["names"], r["ids"], r.get("gold")) for r in mine] == \
        [(r["document"], r["names"], r["ids"], r.get("gold")) for r in theirs]
    assert not (tmp_path / "out" / "annotations.pubtator").exists()

    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + json.dumps({"text": "abc", "spans": [[2, 1]]}) + "\n")
    assert main(["annotate", "--model", str(setup / "run" / "model"), "--input", str(tmp_path / "bad.jsonl"),
                 "--format", "jsonl", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "bad.jsonl:2: spans[0] = [2, 1]" in capsys.readouterr().err


def test_annotate_rerun_skips_finished_shards_and_refuses_other_settings(setup, annotated, capsys):
    parts = sorted(annotated.glob("parts/part-*.jsonl"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    output = (annotated / "annotations.jsonl").read_bytes()
    assert _annotate(setup, annotated) == 0
    assert "(0 shards linked now)" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    assert (annotated / "annotations.jsonl").read_bytes() == output
    assert _annotate(setup, annotated, "--k", "2") == 2
    assert "another annotation" in capsys.readouterr().err


# -- angel serve (last: its replica holds a CPU of the session's Ray) ---------------------------

@pytest.fixture(scope="module")
def service(setup):
    from angel_dist.serve import ServeConfig, start_service, stop_service

    port = free_port()
    start_service(ServeConfig(bundle=str(setup / "run" / "model"), port=port, beams=5, batch_wait_ms=50))
    yield port
    stop_service()


def _request(port, method, path, body=b"", headers=None, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=iter([body]) if chunked else body, headers=headers or {},
                     encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _link(port, payload):
    status, headers, body = _request(port, "POST", "/link", json.dumps(payload).encode())
    return status, headers, json.loads(body)


TEXT = "The patient had kidney cysts at birth. Later recurrent urinary infections were seen."
SPANS = [[16, 28], [45, 73]]


def test_service_links_spans_and_binds_loopback_only(setup, service, linker):
    import psutil

    listening = [c for c in psutil.net_connections(kind="inet") if c.laddr.port == service and c.status == "LISTEN"]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
    status, _, body = _request(service, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, result = _link(service, {"text": TEXT, "spans": SPANS, "k": 3})
    assert status == 200 and int(headers["x-angel-batch"]) >= 1
    expected = linker.link_documents([text_document(TEXT, SPANS)])[0]
    assert [m["mention"] for m in result["mentions"]] == ["kidney cysts", "recurrent urinary infections"]
    assert [m["names"] for m in result["mentions"]] == [[p.name for p in e[:3]] for e in expected]
    assert [m["ids"] for m in result["mentions"]] == [[list(p.cuis) for p in e[:3]] for e in expected]


def test_service_batches_concurrent_requests(service):
    start = threading.Barrier(16)

    def one(i):
        start.wait()
        return _link(service, {"text": TEXT, "spans": [SPANS[i % 2]], "k": 2})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(status == 200 for status, _, _ in answers)
    assert max(int(h["x-angel-batch"]) for _, h, _ in answers) > 1  # several clients shared one search
    for i, (_, _, result) in enumerate(answers):
        assert result == answers[i % 2][2]


def _malformed() -> list[tuple]:
    """(method, path, body, headers, chunked): what clients get wrong."""
    valid = {"text": "fever and cough", "spans": [[0, 5]], "k": 2}
    bodies = [b"", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe{}", b'{"text": "caf\xe9", "spans": []}',
              b"[" * 100_000 + b"]" * 100_000, b'{"text": "a", "spans": [[0, 1]], "k": NaN}',
              b'{"text": "a", "spans": [[0, 1]], "k": 1' + b"0" * 5000 + b"}",
              json.dumps({"text": "\ud800 fever", "spans": [[2, 7]]}).encode()]
    bad = [{**valid, "text": 5}, {**valid, "text": None}, {**valid, "spans": "0,5"}, {**valid, "spans": [[0]]},
           {**valid, "spans": [[0, 5, 6]]}, {**valid, "spans": [[True, 5]]}, {**valid, "spans": [[0.0, 5]]},
           {**valid, "spans": [["0", "5"]]}, {**valid, "spans": [[5, 0]]}, {**valid, "spans": [[3, 3]]},
           {**valid, "spans": [[-1, 5]]}, {**valid, "spans": [[0, 99]]}, {**valid, "spans": [[5, 6]]},
           {**valid, "spans": [[0, 5]] * 1000}, {**valid, "k": 0}, {**valid, "k": 6}, {**valid, "k": "2"},
           {**valid, "k": 2.0}, {**valid, "k": True}, {**valid, "k": None}, {**valid, "extra": 1}, {"text": "a"},
           {"spans": [[0, 1]]}, {**valid, "spans": {"0": 5}}]
    cases = [("POST", "/link", b, {}, False) for b in bodies]
    cases += [("POST", "/link", json.dumps(b).encode(), {"Content-Type": "application/json"}, False) for b in bad]
    huge = json.dumps({"text": "x" * (3 << 20), "spans": [[0, 1]]}).encode()
    cases += [("POST", "/link", huge, {}, False), ("POST", "/link", huge, {}, True)]
    routes = [("GET", "/link"), ("PUT", "/link"), ("POST", "/healthz"), ("GET", "/nowhere"), ("DELETE", "/")]
    cases += [(method, path, b"{}", {}, False) for method, path in routes]
    return cases


def test_service_answers_1000_malformed_requests_with_4xx_and_keeps_serving(service):
    served = json.loads(_request(service, "GET", "/healthz")[2])["served"]
    cases = _malformed()
    plan = [cases[i % len(cases)] for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: _request(service, *c[:4], chunked=c[4]), plan))
    wrong = [(c[:2], c[2][:60], status, body[:200]) for c, (status, _, body) in zip(plan, answers)
             if not 400 <= status < 500]
    assert not wrong
    assert {status for c, (status, _, _) in zip(plan, answers) if len(c[2]) > MAX_BODY_BYTES} == {413}
    assert {status for c, (status, _, _) in zip(plan, answers) if c[2].startswith(b"\xff")} == {400}
    assert all("error" in json.loads(body) for _, _, body in answers[:len(cases)] if body.startswith(b"{"))
    status, _, result = _link(service, {"text": TEXT, "spans": SPANS, "k": 3})
    assert status == 200 and len(result["mentions"]) == 2
    # The same replica answers: its count went on from where it was (a restarted one starts at 0).
    assert json.loads(_request(service, "GET", "/healthz")[2])["served"] == served + 1
