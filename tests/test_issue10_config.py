"""Issue #10: every config key is checked (type, range) before anything runs; one answer per mistake."""
from __future__ import annotations

import dataclasses

import pytest

from jobs.cli import main
from pipeline.config import (KEYS, ConfigError, DedupOptions, ImageOptions, JobConfig, RayOptions, SourceSpec, StorageOptions,
                             VideoOptions)

BASE = {"sources": [{"path": "data.jsonl"}]}

WRONG_TYPE = {"int": "many", "number": "fast", "bool": "yes", "str": 5, "list[str]": "jpeg", "mapping": [1]}


def _with(key: str, value):
    data = {"sources": [{"path": "data.jsonl"}]}
    if key.startswith("sources[]."):
        data["sources"][0][key[10:]] = value
        return data
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return data


def _out_of_range(rule):
    if rule.choices is not None or rule.via is not None:
        return "no-such-choice"
    if rule.ge is not None:
        return rule.ge - 1 if rule.type == "int" else rule.ge - 0.5
    if rule.gt is not None:
        return rule.gt - (1 if rule.type == "int" else 0.5)
    if rule.le is not None:
        return rule.le + 1
    return None


def _shown(key: str) -> str:
    return key.replace("sources[].", "sources[0].")


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_refuses_a_wrong_type_naming_key_value_and_what_is_allowed(key):
    bad = WRONG_TYPE[KEYS[key].type]
    with pytest.raises(ConfigError) as e:
        JobConfig.from_dict(_with(key, bad))
    msg = str(e.value)
    assert _shown(key) in msg and repr(bad) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("key", sorted(k for k in KEYS if _out_of_range(KEYS[k]) is not None))
def test_every_bounded_key_refuses_an_out_of_range_value(key):
    bad = _out_of_range(KEYS[key])
    with pytest.raises(ConfigError) as e:
        JobConfig.from_dict(_with(key, bad))
    assert _shown(key) in str(e.value) and repr(bad) in str(e.value), str(e.value)


def test_the_keys_table_covers_every_config_field_and_nothing_else():
    fields = {f"sources[].{f.name}" for f in dataclasses.fields(SourceSpec)}
    sections = (("image", ImageOptions), ("video", VideoOptions), ("dedup", DedupOptions), ("ray", RayOptions),
                ("storage", StorageOptions))
    for sec, cls in sections:
        fields |= {f"{sec}.{f.name}" for f in dataclasses.fields(cls)}
    fields |= {f.name for f in dataclasses.fields(JobConfig) if f.name not in ("sources", *(s for s, _ in sections))}
    assert fields == set(KEYS)


def test_the_defaults_and_typical_values_pass():
    JobConfig.from_dict(BASE)
    JobConfig.from_dict({**BASE, "filters": None, "cleaning": None, "image": None})   # empty YAML sections
    JobConfig.from_dict({**BASE, "video": {"fps": 1, "max_frames": 64, "min_pixels": 784}, "ray": {"workers": 2},
                         "grounding_format": "qwen2vl", "max_error_share": 0.2})


@pytest.mark.parametrize("override, says", [
    ("video.fps=-1", "video.fps = -1 is not allowed: must be a number > 0 or null"),
    ("video.fps=0", "video.fps = 0 is not allowed"),
    ("video.max_frames=many", "video.max_frames = 'many' is not allowed: must be a whole number >= 1"),
    ("image.min_pixels=100", "image.min_pixels = 100 is not allowed: must be a whole number >= 784"),
    ("ray.workers=0", "ray.workers = 0 is not allowed"),
    ("unit_size=true", "unit_size = True is not allowed"),
    ("video.max_pixels=1000", "video.min_pixels"),  # set below with min_pixels=2000: min <= max
])
def test_prepare_refuses_bad_values_in_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override, says):
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "hello"}]}\n')
    (tmp_path / "job.yaml").write_text("sources: [data.jsonl]\n")
    extra = ["--set", "video.min_pixels=2000"] if override.startswith("video.max_pixels") else []
    rc = main(["prepare", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out"), "--set", override, *extra,
               "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and err.startswith("vlprep prepare: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["prepare", "job.yaml", "--workers", "0"], ["prepare", "job.yaml", "--workers", "-1"],
    ["stats", "x.jsonl", "--workers", "0"], ["score", "out", "--workers", "-1"], ["encode", "x.jsonl", "--limit", "0"],
])
def test_counts_below_one_are_refused_before_anything_runs(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "must be a whole number >= 1" in capsys.readouterr().err


def test_every_command_reports_a_preset_typo_in_one_line(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                      '{"role": "assistant", "content": "hello"}]}\n')
    for argv in (["encode", str(tmp_path / "x.jsonl"), "--preset", "qwen2_5_vl"],
                 ["stats", str(tmp_path / "x.jsonl"), "--preset", "qwen2_5_vl", "--executor", "local",
                  "--out", str(tmp_path / "s")]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "unknown preset 'qwen2_5_vl'" in err and "Traceback" not in err, err
        assert err.strip().count("\n") == 0, err
