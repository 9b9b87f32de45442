"""A data taxonomy: coarse categories, each with fine ones (docs/curation.md).

`load_taxonomy(None)` reads the bundled `taxonomy_default.yaml`; a user file follows the schema at the
top of that file. Every mistake in a user file is a `TaxonomyError` naming the file, the entry and
what to change.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import ScorerError

DEFAULT_PATH = Path(__file__).with_name("taxonomy_default.yaml")
REQUIREMENTS = ("image", "video", "text_only", "non_latin")
_NAME = re.compile(r"^[a-z0-9_]+$")


class TaxonomyError(ScorerError):
    """A taxonomy file that cannot be used; the message says which entry and what to change."""


@dataclass(frozen=True)
class Fine:
    name: str
    coarse: str
    description: str
    examples: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    boost: float = 0.0

    def prototypes(self) -> list[str]:
        """The texts the zero-shot tagger compares a sample with (best match counts)."""
        return [self.description, *self.examples]


@dataclass(frozen=True)
class Coarse:
    name: str
    description: str
    fine: tuple[Fine, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Taxonomy:
    coarse: tuple[Coarse, ...]
    source: str

    @property
    def fine(self) -> list[Fine]:
        return [f for c in self.coarse for f in c.fine]

    @property
    def coarse_names(self) -> list[str]:
        return [c.name for c in self.coarse]

    def parent(self, fine_name: str) -> str:
        for f in self.fine:
            if f.name == fine_name:
                return f.coarse
        raise KeyError(fine_name)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    import yaml

    src = Path(path) if path else DEFAULT_PATH
    if not src.is_file():
        raise TaxonomyError(f"taxonomy file {src} not found; pass --taxonomy PATH to a YAML file "
                            f"(schema: {DEFAULT_PATH})")
    try:
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"taxonomy {src} is not valid YAML: {exc}") from None
    return parse_taxonomy(data, str(src))


def parse_taxonomy(data, source: str = "<taxonomy>") -> Taxonomy:
    def err(msg: str) -> TaxonomyError:
        return TaxonomyError(f"taxonomy {source}: {msg} (schema: {DEFAULT_PATH.name})")

    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not data["categories"]:
        raise err("expected a mapping with a non-empty `categories:` list")
    if data.get("version", 1) != 1:
        raise err(f"version {data.get('version')!r} is not supported; use version: 1")
    seen: set[str] = set()
    coarse = []
    for ci, c in enumerate(data["categories"]):
        where = f"categories[{ci}]"
        if not isinstance(c, dict):
            raise err(f"{where} must be a mapping with name, description, fine")
        cname = _name(c.get("name"), where, err)
        if cname in seen:
            raise err(f"{where}: name {cname!r} is used twice; names must be unique across coarse and fine")
        seen.add(cname)
        fines = c.get("fine")
        if not isinstance(fines, list) or not fines:
            raise err(f"{where} ({cname}): needs a non-empty `fine:` list")
        fl = []
        for fi, f in enumerate(fines):
            fwhere = f"{where}.fine[{fi}]"
            if not isinstance(f, dict):
                raise err(f"{fwhere} must be a mapping with name, description")
            fname = _name(f.get("name"), fwhere, err)
            if fname in seen and fname != cname:
                raise err(f"{fwhere}: name {fname!r} is used twice; names must be unique")
            seen.add(fname)
            desc = f.get("description")
            if not isinstance(desc, str) or not desc.strip():
                raise err(f"{fwhere} ({fname}): needs a one-sentence `description:`")
            ex = f.get("examples", []) or []
            if not isinstance(ex, list) or not all(isinstance(e, str) and e.strip() for e in ex):
                raise err(f"{fwhere} ({fname}): `examples:` must be a list of non-empty strings")
            req = f.get("requires", []) or []
            if isinstance(req, str):
                req = [req]
            bad = [r for r in req if r not in REQUIREMENTS]
            if bad:
                raise err(f"{fwhere} ({fname}): unknown requires {bad}; choose from {list(REQUIREMENTS)}")
            boost = f.get("boost", 0.0)
            if not isinstance(boost, (int, float)) or isinstance(boost, bool) or not -1 <= boost <= 1:
                raise err(f"{fwhere} ({fname}): boost must be a number in [-1, 1], got {boost!r}")
            fl.append(Fine(fname, cname, desc.strip(), tuple(e.strip() for e in ex), tuple(req), float(boost)))
        cdesc = c.get("description")
        if not isinstance(cdesc, str) or not cdesc.strip():
            raise err(f"{where} ({cname}): needs a one-sentence `description:`")
        coarse.append(Coarse(cname, cdesc.strip(), tuple(fl)))
    return Taxonomy(tuple(coarse), source)


def _name(value, where: str, err) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise err(f"{where}: name {value!r} must be lower-case letters, digits and _ (e.g. ocr_document)")
    return value
