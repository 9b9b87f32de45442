"""What the score stage reads from a prepare output before any model loads: its work units and
the tokenizer its ids were written with. Shared by `vlprep score`, `vlprep verify` and bench/."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path


def units_from_manifest(out_dir: Path):
    """(units in manifest order, preset name) from OUT/manifest.parquet."""
    import pyarrow.parquet as pq

    from filters.reward.stage import Unit

    path = out_dir / "manifest.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {out_dir} the output of a finished `vlprep prepare`?")
    m = pq.read_table(path, columns=["unit", "shard", "preset"])
    counts: OrderedDict[tuple[str, str], int] = OrderedDict()
    for unit, shard in zip(m.column("unit").to_pylist(), m.column("shard").to_pylist()):
        counts[(unit, shard)] = counts.get((unit, shard), 0) + 1
    presets = sorted(set(m.column("preset").to_pylist()))
    if len(presets) > 1:
        raise ValueError(f"{path} mixes presets {presets}; score each preset's output separately")
    return [Unit(u, s, n) for (u, s), n in counts.items()], (presets[0] if presets else "qwen2.5-vl")


def shards_tokenizer(out: Path, override: str | None, preset: str) -> str | None:
    """The tokenizer folder the scorers read OUT's ids with: `--tokenizer`, else OUT/job.json's
    `tokenizer:` (pipeline.dataset.out_tokenizer_path), else None (built-in ranks). Checked here, so a
    folder that is gone or lacks a special token the preset needs is one line before any model loads."""
    from filters.reward.protocol import ScorerError, vocab_for
    from pipeline.dataset import out_tokenizer_path

    path = override or out_tokenizer_path(out)
    if path is None:
        return None
    if not Path(path, "tokenizer.json").exists() and not (Path(path).is_file() and path.endswith(".json")):
        where = "--tokenizer" if override else f"{out / 'job.json'} `tokenizer:`"
        raise ScorerError(f"{where} names {path}, which has no tokenizer.json; pass --tokenizer PATH (the tokenizer "
                          "folder the shards were prepared with)")
    vocab_for(path, preset)
    return str(path)
