"""The model card (README.md) of a bundle: how it was made, on what, how well it links, how to use it."""

from __future__ import annotations

import yaml

from angel_dist.bundle.layout import BundleContents
from angel_dist.corpus.mention_examples import describe_inputs


def model_card(contents: BundleContents, manifest: dict, files: list[dict]) -> str:
    from angel_dist.report import accuracy_table

    lines = [
        f"# {contents.name}", "",
        "A generative biomedical entity linker trained with angel-dist (ANGEL on GenBioEL): a BART model reads",
        "a text with the mention marked `START ... END`, writes `<mention> is <KB name>` under a prefix trie of",
        "the knowledge base's names, and its top-k names map to concept ids.", "",
        "## Use", "",
        "```bash",
        'angel link --model . "the patient developed START renal failure END after surgery"',
        "angel annotate --model . --input docs.pubtator --out annotated/",
        "angel serve .",
        "```", "",
        "From Python: `Linker.from_bundle(DIR)` (`angel_dist.decode.linker`).", "",
        "## Made by", "",
        f"`{contents.command}`" if contents.command else "(no command recorded)", "",
        f"{contents.made_from}.", "",
        "## Data", "",
        *[f"- {line}" for line in contents.data],
        f"- fingerprints: KB `{manifest['kb_fingerprint']}`, tokenizer `{manifest['tokenizer_fingerprint']}`, "
        f"model `{manifest['model_fingerprint']}`",
        f"- inputs: {describe_inputs(contents.inputs)}, at most {contents.inputs['max_source_tokens']} tokens", "",
        "## Accuracy", "",
        accuracy_table(contents.accuracy, contents.k) if contents.accuracy else
        "Not measured for this bundle: `angel evaluate --model DIR --trie DIR/trie --data SHARDS` measures it.", "",
        "## Recipe", "",
        "```yaml", yaml.safe_dump(contents.recipe, sort_keys=False).rstrip(), "```", "",
        "## Files", "",
        "| file | bytes | what |", "| --- | --- | --- |",
        *[f"| `{f['path']}` | {f['bytes']} | {f['role']} |" for f in files], "",
        "`bundle.json` lists every file with its sha256; loading the bundle checks them.", "",
    ]
    return "\n".join(lines)
