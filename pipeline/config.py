"""The prepare job's configuration: one YAML file, `--set a.b=c` overrides, strict keys.

Every section is a small frozen-ish dataclass; unknown keys fail loudly with the list of valid
keys at that level, because a typo (`max_lenght`) silently ignored would change the output.
Relative paths are resolved against the directory of the YAML file (the config is portable
with its corpus); `--out` given on the command line is relative to the current directory.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from processors.errors import UserInputError, did_you_mean
from processors.video import BACKENDS
from processors.video_resize import RESIZE_MODES

from .storage import CODECS

SOURCE_KINDS = ("json", "jsonl", "parquet", "webdataset", "folder")
SOURCE_FORMATS = ("auto", "llava", "sharegpt", "llamafactory", "qwen", "openai")
_KIND_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".tar": "webdataset"}


class ConfigError(UserInputError):
    """The job configuration is invalid; the message names the key and the valid choices."""


@dataclass
class SourceSpec:
    path: str                          # file, folder or glob (relative to the config's directory)
    kind: str | None = None            # json|jsonl|parquet|webdataset|folder (None: from the suffix)
    format: str = "auto"               # record format for parse_record
    media_root: str | None = None      # None: the source file's folder (the folder itself for `folder`)
    instruction: str | None = None     # user turn of caption sources (None: "Describe this image/video.")
    caption_key: str = "caption"       # key of the caption in a webdataset/folder .json sidecar

    def kind_for(self, p: Path) -> str:
        """The source kind of the (resolved) file or folder `p`."""
        if self.kind:
            return self.kind
        if p.is_dir():
            return "folder"
        kind = _KIND_BY_SUFFIX.get(p.suffix.lower())
        if kind is None:
            raise ConfigError(f"source {self.path!r}: cannot infer `kind` from the suffix; "
                              f"set kind to one of {list(SOURCE_KINDS)}")
        return kind


@dataclass
class ImageOptions:
    min_pixels: int | None = None      # None: the preset's band
    max_pixels: int | None = None
    max_image_pixels: int | None = None  # decompression-bomb guard
    fast: bool = False                 # JPEG draft decode when downscaling >= 2x (not bit-exact)
    formats: list[str] = field(default_factory=lambda: ["jpeg", "png", "webp", "gif", "bmp", "tiff", "mpo"])


@dataclass
class VideoOptions:
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None
    backend: str = "pyav"
    timeout_s: float = 120.0
    decode_workers: int | None = None  # threads decoding one video's keyframe runs at once (null: ray.num_cpus; docs/video.md)
    resize: str | None = None          # the reference frames are resized bit-exactly to: qwen-vl-utils | transformers (None: the preset's; docs/video.md)
    fast: bool = False                 # deprecated: `fast: true` = `resize: transformers`
    formats: list[str] = field(default_factory=lambda: ["mp4", "avi", "mkv", "mov", "webm", "m4v", "mpeg", "mpg", "ts", "m2ts", "mts", "flv", "3gp"])


@dataclass
class DedupOptions:
    exact: bool = True                 # same cleaned text + same media bytes -> keep the first
    phash: bool = False                # near-duplicate image samples: 64-bit pHash per image, in order
    phash_threshold: int = 6           # max Hamming distance counted as a near-duplicate


@dataclass
class StorageOptions:
    codec: str = "zstd-delta"          # pixel members, each pixel once, lossless: zstd-delta|webp|png|zstd|npy|lz4-delta (docs/storage.md)


@dataclass
class RayOptions:
    address: str | None = None         # None: an embedded local Ray; "auto" or "ray://host:port"
    num_cpus: float = 1.0              # CPUs declared by each encode task (a unit)
    index_num_cpus: float = 1.0        # CPUs per index (dedup key) task; < 1 starts extra workers (each loads torch + tokenizer)
    concurrency: int | None = None     # max units in flight (None: 2 x cluster CPUs)
    workers: int | None = None         # CPUs of the embedded local Ray (None: all)
    max_retries: int = 1               # re-runs of a unit whose worker died on a record before that record is quarantined
    record_timeout_s: float = 900.0    # a worker stuck this long on one record is killed and the record quarantined (0: never)


@dataclass
class JobConfig:
    sources: list[SourceSpec]
    out: str | None = None
    preset: str = "qwen2.5-vl"
    tokenizer: str | None = None       # a local Hugging Face tokenizer folder; None: the bundled ranks
    system_prompt: str | None = None
    max_length: int | None = None      # longer samples are dropped (rule max_length), never truncated
    grounding_format: str | None = None  # box format of the SOURCE text (None: leave text as is)
    image: ImageOptions = field(default_factory=ImageOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    cleaning: dict[str, Any] = field(default_factory=dict)   # kwargs of processors.text.clean_sample
    filters: dict[str, Any] = field(default_factory=dict)    # mapping for filters.build_filters
    dedup: DedupOptions = field(default_factory=DedupOptions)
    unit_size: int = 256               # records per work unit (one shard per unit)
    max_error_share: float | None = None  # the job fails (exit 1) when more records than this share are errors
    ray: RayOptions = field(default_factory=RayOptions)
    storage: StorageOptions = field(default_factory=StorageOptions)
    base_dir: str = "."                # where relative paths are resolved (the YAML's folder)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: str | Path = ".") -> "JobConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"the config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        data.setdefault("base_dir", str(base_dir))
        cfg = _build(cls, data, "")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "JobConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except IsADirectoryError:
            found = sorted(p.name for p in path.glob("*.y*ml"))[:3]
            raise ConfigError(f"config file {path} is a folder; give the job YAML itself"
                              + (f" (here: {', '.join(found)})" if found else "")) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
        data = apply_overrides(data, overrides or [])
        return cls.from_dict(data, base_dir=path.resolve().parent)

    def validate(self) -> None:
        """Every key against its line of KEYS (type, range, choices), then the checks across keys."""
        if not self.sources:
            raise ConfigError("`sources` is empty: list at least one {path, kind, format, media_root}")
        for key, rule in KEYS.items():
            if key.startswith("sources[]."):
                for i, s in enumerate(self.sources):
                    rule.check(f"sources[{i}].{key[10:]}", getattr(s, key[10:]))
            else:
                rule.check(key, _get(self, key))
        for sec in ("image", "video"):
            lo, hi = _get(self, f"{sec}.min_pixels"), _get(self, f"{sec}.max_pixels")
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{sec}.min_pixels ({lo}) is above {sec}.max_pixels ({hi}): min must be <= max")
        lo, hi = self.video.min_frames, self.video.max_frames
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"video.min_frames ({lo}) is above video.max_frames ({hi}): min must be <= max")
        try:
            from filters.base import build_filters

            build_filters(self.filters or {})
        except ValueError as exc:
            raise ConfigError(f"filters: {exc}") from None
        if self.cleaning:
            from processors.text import clean_text

            try:
                clean_text("x", **self.cleaning)
            except TypeError as exc:
                raise ConfigError(f"cleaning: {exc} (valid: nfc, control, html_entities, whitespace, "
                                  f"max_blank_lines)") from None
        self.video_resize()  # video.resize and the deprecated video.fast must agree

    # -- helpers --------------------------------------------------------------------------------
    def video_resize(self) -> str:
        """The video resize reference this job uses: `video.resize`, or the deprecated `video.fast`,
        else the preset's (`Preset.video_resize`)."""
        from processors.presets import get_preset
        from processors.video_resize import resize_mode

        try:
            return resize_mode(self.video.resize, self.video.fast or None, default=get_preset(self.preset).video_resize)
        except ValueError as exc:
            raise ConfigError(f"video.resize: {exc}") from None

    def resolve_path(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def out_dir(self) -> Path:
        if not self.out:
            raise ConfigError("no output directory: set `out:` in the config or pass --out DIR")
        return self.resolve_path(self.out).resolve()

    def encode_options(self) -> dict[str, Any]:
        """Keyword arguments for processors.encode.EncodeOptions (max_length is the pipeline's filter)."""
        return {
            "min_pixels": self.image.min_pixels,
            "max_pixels": self.image.max_pixels,
            "fast_images": self.image.fast,
            "max_image_pixels": self.image.max_image_pixels,
            "video_fps": self.video.fps,
            "video_min_frames": self.video.min_frames,
            "video_max_frames": self.video.max_frames,
            "video_min_pixels": self.video.min_pixels,
            "video_max_pixels": self.video.max_pixels,
            "video_total_pixels": self.video.total_pixels,
            "video_backend": self.video.backend,
            "video_timeout_s": self.video.timeout_s,
            # a task declares ray.num_cpus cores, and the runner keeps every core busy with tasks
            "video_decode_workers": self.video.decode_workers or max(1, int(self.ray.num_cpus)),
            "video_resize": self.video_resize(),
            "grounding_format": self.grounding_format,
            "system_prompt": self.system_prompt,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        # sort_keys + fixed separators: job.json is byte-identical across runs of the same config
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line error as one line: where, and what it expected."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what


def _build(cls, data: Any, where: str):
    """Instantiate dataclass `cls` from a mapping, refusing unknown keys with the valid list."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(valid))
    if unknown:
        keys = sorted(k for k in valid if k != 'base_dir')
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'the config'}{did_you_mean(unknown, keys)}; "
                          f"valid keys: {keys}")
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        key = f"{where}.{name}" if where else name
        if sub is SourceSpec:
            if isinstance(value, (str, dict)):
                value = [value]
            if not isinstance(value, list):
                raise ConfigError("`sources` must be a list of {path, kind, format, media_root}")
            value = [_build(SourceSpec, {"path": v} if isinstance(v, str) else v, f"{key}[{i}]")
                     for i, v in enumerate(value)]
        elif sub is not None:
            value = _build(sub, value or {}, key)
        kwargs[name] = value
    missing = [f.name for f in valid.values() if f.name not in kwargs and _required(f)]
    if missing:
        raise ConfigError(f"missing key(s) {missing} in {where or 'the config'}")
    return cls(**kwargs)


def _required(f) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


_MIN_PIXELS = 28 * 28   # one merged 2x2 patch of 14 px: the smallest image any preset encodes


@dataclass(frozen=True)
class Key:
    """One config key's rule: its type, whether null is allowed, its range or choices, and its doc."""

    type: str                      # int | number | bool | str | list[str] | mapping
    doc: str
    null: bool = False
    ge: float | None = None        # value >= ge
    gt: float | None = None        # value > gt
    le: float | None = None        # value <= le
    choices: tuple | None = None
    via: Any = None                # the owner's own check (raises ValueError), e.g. processors.get_preset

    def allowed(self) -> str:
        what = {"int": "a whole number", "number": "a number", "bool": "true or false", "str": "a string",
                "list[str]": "a list of strings", "mapping": "a mapping"}[self.type]
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        bounds = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                  f"<= {self.le:g}" if self.le is not None else ""]
        bounds = " and ".join(b for b in bounds if b)
        return what + (f" {bounds}" if bounds else "") + (" or null" if self.null else "")

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v,
              "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str),
              "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "mapping": lambda v: isinstance(v, dict)}[self.type](value)
        if ok and self.choices is not None and value not in self.choices:
            raise ConfigError(f"{key} {value!r} is not one of {list(self.choices)}"
                              + (" or null" if self.null else "") + f" ({self.doc})")
        if ok and self.type in ("int", "number"):
            ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le))
        if not ok:
            raise ConfigError(f"{key} = {value!r} is not allowed: must be {self.allowed()} ({self.doc})")
        if self.via is not None:
            try:
                self.via(value)
            except ValueError as exc:
                raise ConfigError(f"{key} = {value!r} is not allowed: {exc}") from None


def _preset(name: str) -> None:
    from processors.presets import get_preset

    get_preset(name)


def _grounding(name: str) -> None:
    from processors.grounding import _fmt_name

    _fmt_name(name)


# Every config key, one line each: a new key is a new field above plus its line here (a test walks
# them all with a wrong type and an out-of-range value). `sources[].x` applies to every source.
KEYS: dict[str, Key] = {
    "sources[].path": Key("str", "file, folder or glob, relative to the config's folder"),
    "sources[].kind": Key("str", "source kind; null: from the suffix", null=True, choices=SOURCE_KINDS),
    "sources[].format": Key("str", "record format", choices=SOURCE_FORMATS),
    "sources[].media_root": Key("str", "folder the records' media paths are relative to", null=True),
    "sources[].instruction": Key("str", "user turn of caption sources", null=True),
    "sources[].caption_key": Key("str", "caption key of a webdataset/folder .json sidecar"),
    "out": Key("str", "output directory", null=True),
    "preset": Key("str", "model preset", via=_preset),
    "tokenizer": Key("str", "a local Hugging Face tokenizer folder; null: the bundled ranks", null=True),
    "system_prompt": Key("str", "system turn; null: the preset's", null=True),
    "max_length": Key("int", "longer samples are dropped", null=True, ge=1),
    "grounding_format": Key("str", "box format of the source text; null: text left as is", null=True,
                            via=_grounding),
    "image.min_pixels": Key("int", "image pixel band; null: the preset's", null=True, ge=_MIN_PIXELS),
    "image.max_pixels": Key("int", "image pixel band; null: the preset's", null=True, ge=_MIN_PIXELS),
    "image.max_image_pixels": Key("int", "decompression-bomb guard", null=True, ge=_MIN_PIXELS),
    "image.fast": Key("bool", "JPEG draft decode when downscaling"),
    "image.formats": Key("list[str]", "accepted image formats"),
    "video.fps": Key("number", "frames sampled per second; null: the preset's", null=True, gt=0),
    "video.min_frames": Key("int", "fewest sampled frames; null: the preset's", null=True, ge=1),
    "video.max_frames": Key("int", "most sampled frames; null: the preset's", null=True, ge=1),
    "video.min_pixels": Key("int", "frame pixel band; null: the preset's", null=True, ge=_MIN_PIXELS),
    "video.max_pixels": Key("int", "frame pixel band; null: the preset's", null=True, ge=_MIN_PIXELS),
    "video.total_pixels": Key("int", "pixel budget of a whole video; null: the preset's", null=True, ge=_MIN_PIXELS),
    "video.backend": Key("str", "video decoder", choices=BACKENDS),
    "video.timeout_s": Key("number", "seconds one video may take to decode", gt=0),
    "video.decode_workers": Key("int", "threads decoding one video's keyframe runs at once; null: ray.num_cpus",
                                null=True, ge=1),
    "video.resize": Key("str", "the reference the frame resize equals bit for bit; null: the preset's",
                        null=True, choices=RESIZE_MODES),
    "video.fast": Key("bool", "deprecated: true = video.resize transformers"),
    "video.formats": Key("list[str]", "accepted video containers"),
    "cleaning": Key("mapping", "keyword arguments of processors.text.clean_sample", null=True),
    "filters": Key("mapping", "filter rules, see docs/filters.md", null=True),
    "dedup.exact": Key("bool", "drop exact duplicates"),
    "dedup.phash": Key("bool", "drop near-duplicate images"),
    "dedup.phash_threshold": Key("int", "max Hamming distance of near-duplicates", ge=0, le=32),
    "unit_size": Key("int", "records per work unit", ge=1),
    "max_error_share": Key("number", "share of error records above which the job fails; null: never",
                           null=True, ge=0, le=1),
    "ray.address": Key("str", "auto or ray://host:port; null: an embedded local Ray", null=True),
    "ray.num_cpus": Key("number", "CPUs per encode task", gt=0),
    "ray.index_num_cpus": Key("number", "CPUs per index task", gt=0),
    "ray.concurrency": Key("int", "max units in flight; null: 2 x cluster CPUs", null=True, ge=1),
    "ray.workers": Key("int", "CPUs of the embedded local Ray; null: all", null=True, ge=1),
    "ray.max_retries": Key("int", "re-runs of a unit whose worker died", ge=0),
    "ray.record_timeout_s": Key("number", "seconds without progress on one record; 0: never", ge=0),
    "storage.codec": Key("str", "lossless pixel codec of the shards (docs/storage.md)", choices=CODECS),
    "base_dir": Key("str", "where relative paths are resolved"),
}


def _get(cfg: "JobConfig", key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


_SECTIONS = {
    (JobConfig, "sources"): SourceSpec,
    (JobConfig, "image"): ImageOptions,
    (JobConfig, "video"): VideoOptions,
    (JobConfig, "dedup"): DedupOptions,
    (JobConfig, "ray"): RayOptions,
    (JobConfig, "storage"): StorageOptions,
}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (`3`, `true`, `[1, 2]`, `null`).

    A numeric path component indexes a list (`sources.0.media_root=/data`).
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set max_length=4096)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {_yaml_problem(exc)}") from None
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, item, create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, item)
            node[idx] = value
        else:
            node[last] = value
    return data


def _index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, item: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {part!r} is inside a non-mapping value")
    if node.get(part) is None and create:
        node[part] = {}
    return node[part]
