"""Tokenizers for the text form of the data.

* The built-in numeric tokenizer ``msenc-numeric`` (the default): one token per character of what the text
  form can contain (digits, ``.``, ``-``, ``,``, the exponent characters ``e``/``+`` and the letters of
  ``nan``/``inf``) plus the specials ``<|PAD|>``, ``<|UNK|>``, ``<|MASK|>`` and the time separator
  ``<|sep|>``: 23 tokens. It is saved as a Hugging Face fast tokenizer (``tokenizer.json``) that
  ``transformers.AutoTokenizer.from_pretrained(DIR)`` loads; it adds no BOS/EOS and decodes without spaces,
  so ``decode(encode(text)) == text`` for every text the preprocessing writes. Digits ``"0".."9"`` have the
  consecutive ids 4..13 (the number tokens of the number-token loss).
* Any local Hugging Face tokenizer folder (or ``s3://`` prefix holding one), patched like the original
  (``update_tokenizer``): a tokenizer's own sep token wins over ``--time-sep``; otherwise the time separator
  is added as the sep token; ``<|UNK|>``, ``<|PAD|>``, ``<|MASK|>`` are added when missing. Hub ids are not
  downloaded (no network): they fail with a message saying what to pass instead.

Helpers used by training and embedding: :func:`load_tokenizer`, :func:`special_token_ids`,
:func:`digit_token_ids`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msenc_lib.errors import ConfigError
from msenc_lib.preprocess.textformat import Alphabet, token_alphabet

log = logging.getLogger(__name__)

BUILTIN_NAME = "msenc-numeric"
DEFAULT_SEP = "<|sep|>"
PAD_TOKEN = "<|PAD|>"
UNK_TOKEN = "<|UNK|>"
MASK_TOKEN = "<|MASK|>"
# Characters of the text form: digits, Python float repr (".", "-", "e", "+", "nan", "inf"), value separator.
CHARACTERS = "0123456789.-,e+naif"
DIGITS = "0123456789"


def builtin_vocab(sep_token: str = DEFAULT_SEP) -> dict[str, int]:
    """Token -> id of the built-in tokenizer: specials 0..3, digits 4..13, then the other characters."""
    specials = [PAD_TOKEN, UNK_TOKEN, MASK_TOKEN, sep_token]
    if len(set(specials)) != 4 or sep_token in CHARACTERS:
        raise ConfigError(f"time separator {sep_token!r} clashes with a token of the built-in tokenizer")
    return {tok: i for i, tok in enumerate(specials + list(CHARACTERS))}


def _builtin_core(sep_token: str):
    """The built-in tokenizer as a ``tokenizers.Tokenizer`` (no transformers import needed)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = builtin_vocab(sep_token)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()  # concatenate, no spaces
    core.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t in (PAD_TOKEN, UNK_TOKEN, MASK_TOKEN, sep_token)])
    return core


def _builtin_config(sep_token: str) -> dict[str, Any]:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 62, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN,
            "mask_token": MASK_TOKEN, "sep_token": sep_token}


def build_numeric_tokenizer(sep_token: str = DEFAULT_SEP):
    """The built-in numeric tokenizer as a ``transformers`` fast tokenizer (not yet saved)."""
    from transformers import PreTrainedTokenizerFast

    sep_token = sep_token or DEFAULT_SEP
    cfg = _builtin_config(sep_token)
    cfg.pop("tokenizer_class")
    return PreTrainedTokenizerFast(tokenizer_object=_builtin_core(sep_token), name_or_path=BUILTIN_NAME, **cfg)


def save_builtin_tokenizer(directory: str | os.PathLike, sep_token: str = DEFAULT_SEP) -> None:
    """Write the built-in tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``) without
    importing transformers; ``AutoTokenizer.from_pretrained(directory)`` loads it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _builtin_core(sep_token or DEFAULT_SEP).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(_builtin_config(sep_token or DEFAULT_SEP), indent=2, sort_keys=True) + "\n")


def is_builtin_id(tokenizer_id: str | None) -> bool:
    return tokenizer_id is None or str(tokenizer_id).strip() in ("", BUILTIN_NAME)


SPECIAL_KEYS = ("pad", "mask", "unk", "sep")


def special_token_ids(tok) -> dict[str, int]:
    """``{"pad": id, "mask": id, "unk": id, "sep": id}`` of a (patched) tokenizer; a missing one is an error
    naming it."""
    ids = {"pad": tok.pad_token_id, "mask": tok.mask_token_id, "unk": tok.unk_token_id, "sep": tok.sep_token_id}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ConfigError(f"tokenizer {getattr(tok, 'name_or_path', '?')!r} has no {missing} token(s); "
                          "use the tokenizer folder written by 'msenc preprocess' (it adds them)")
    return {k: int(v) for k, v in ids.items()}


def digit_token_ids(tok) -> list[int] | None:
    """Ids of the single-digit tokens "0".."9" (index = digit value), or None when the tokenizer does not
    encode "0123456789" as exactly these ten tokens (the number-token loss then cannot be used)."""
    vocab = tok.get_vocab()
    ids = [vocab.get(d) for d in DIGITS]
    if any(i is None for i in ids):
        return None
    try:
        encoded = tok(DIGITS, add_special_tokens=False)["input_ids"]
    except Exception:  # pragma: no cover - exotic tokenizers
        return None
    return [int(i) for i in ids] if list(encoded) == ids else None


def vocab_size(tok) -> int:
    """The vocabulary size models must use: ``len(tokenizer)`` (added tokens included), as the original."""
    return len(tok)


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedTokenizer:
    """A tokenizer ready for preprocessing, with the effective separators and, for the built-in
    tokenizer, the alphabet that writes its token ids directly (no tokenizer call)."""

    name: str
    time_sep: str  # what joins time steps in the text ("" = nothing)
    unk_text: str
    sep_token: str
    added_tokens: list[str]
    alphabet: Alphabet | None  # token-id alphabet of the built-in tokenizer, else None
    notes: list[str]
    _tokenizer: Any = None

    @property
    def builtin(self) -> bool:
        return self.alphabet is not None

    @property
    def tokenizer(self):
        """The transformers tokenizer (built on first use for the built-in one)."""
        if self._tokenizer is None:
            self._tokenizer = build_numeric_tokenizer(self.sep_token)
        return self._tokenizer

    def save(self, directory: str | os.PathLike) -> None:
        if self.builtin and self._tokenizer is None:
            save_builtin_tokenizer(directory, self.sep_token)
        else:
            save_tokenizer(self.tokenizer, directory)

    def vocab_size(self) -> int:
        return len(builtin_vocab(self.sep_token)) if self.builtin else vocab_size(self.tokenizer)


def _alphabet_of_vocab(sep_token: str) -> Alphabet:
    expected = builtin_vocab(sep_token)
    return token_alphabet({c: expected[c] for c in CHARACTERS}, pad=expected[PAD_TOKEN],
                          sep=expected[sep_token], unk=expected[UNK_TOKEN])


def _builtin_alphabet(tok, sep_token: str) -> Alphabet | None:
    """The token-id alphabet when ``tok`` is the built-in tokenizer (same vocabulary, one token per char)."""
    try:
        vocab = tok.get_vocab()
        expected = builtin_vocab(sep_token)
    except ConfigError:
        return None
    if vocab != expected or len(tok) != len(expected):
        return None
    probe = CHARACTERS + UNK_TOKEN + sep_token + CHARACTERS[::-1]
    want = [expected[c] for c in CHARACTERS] + [expected[UNK_TOKEN], expected[sep_token]] + \
        [expected[c] for c in CHARACTERS[::-1]]
    if list(tok(probe, add_special_tokens=False)["input_ids"]) != want or tok.decode(want) != probe:
        return None
    return _alphabet_of_vocab(sep_token)


def _load_folder(tokenizer_id: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_id, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the tokenizer folder {tokenizer_id!r}: {e}") from None


def load_tokenizer(tokenizer_id: str | None = None, time_sep: str | None = DEFAULT_SEP) -> LoadedTokenizer:
    """Load (and patch, like the original ``update_tokenizer``) the tokenizer to preprocess with.

    ``tokenizer_id``: None/"" or ``msenc-numeric`` = the built-in tokenizer (its sep token is ``time_sep``,
    or ``<|sep|>`` if that is empty); a local folder or ``s3://`` prefix = a saved HF tokenizer.
    """
    notes: list[str] = []
    if is_builtin_id(tokenizer_id):
        sep = time_sep or DEFAULT_SEP
        return LoadedTokenizer(BUILTIN_NAME, time_sep or "", UNK_TOKEN, sep, [], _alphabet_of_vocab(sep), notes)

    from msenc_lib import storage

    tokenizer_id = str(tokenizer_id)
    if storage.is_s3(tokenizer_id):
        if not storage.exists(tokenizer_id):
            raise ConfigError(f"tokenizer {tokenizer_id!r}: nothing at that s3:// prefix")
        with storage.local_copy(tokenizer_id) as local:
            tok = _load_folder(str(local))
    elif os.path.isdir(tokenizer_id):
        tok = _load_folder(tokenizer_id)
    else:
        raise ConfigError(
            f"tokenizer {tokenizer_id!r} is not a local folder: Hugging Face hub ids cannot be downloaded here "
            f"(no network). Give a folder written by save_pretrained (local or s3://), or omit --tokenizer-id "
            f"to use the built-in numeric tokenizer '{BUILTIN_NAME}'"
        )

    # Patch like the original: an existing sep token wins over time_sep.
    added: list[str] = []
    if tok.sep_token is None:
        sep = time_sep or DEFAULT_SEP
        tok.add_special_tokens({"sep_token": sep})
        added.append(sep)
        effective_sep = time_sep or ""
    else:
        sep_token = tok.sep_token[0] if isinstance(tok.sep_token, list) else tok.sep_token
        if time_sep and time_sep != sep_token:
            notes.append(f"the tokenizer's own sep token {sep_token!r} is used as time separator "
                         f"(not {time_sep!r}), as the original does")
        effective_sep = sep_token
    for attr, token in (("unk_token", UNK_TOKEN), ("pad_token", PAD_TOKEN), ("mask_token", MASK_TOKEN)):
        if getattr(tok, attr) is None:
            tok.add_special_tokens({attr: token})
            added.append(token)
    name = Path(tokenizer_id.rstrip("/")).name or tokenizer_id
    alphabet = _builtin_alphabet(tok, tok.sep_token) if effective_sep in (tok.sep_token, "") else None
    if alphabet is not None:
        name = BUILTIN_NAME
    return LoadedTokenizer(name, effective_sep, tok.unk_token, tok.sep_token, added, alphabet, notes, tok)


def save_tokenizer(tok, directory: str | os.PathLike) -> None:
    """``save_pretrained`` into ``directory``; the config names the generic fast-tokenizer class so that
    transformers 4.x and 5.x both load it."""
    directory = Path(directory)
    tok.save_pretrained(str(directory))
    cfg_path = directory / "tokenizer_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast") and (
                directory / "tokenizer.json").exists():
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tokenizer_info(loaded: LoadedTokenizer) -> dict[str, Any]:
    """What the manifest records about the tokenizer."""
    if loaded.builtin and loaded._tokenizer is None:
        vocab = builtin_vocab(loaded.sep_token)
        specials = {"pad": vocab[PAD_TOKEN], "mask": vocab[MASK_TOKEN], "unk": vocab[UNK_TOKEN],
                    "sep": vocab[loaded.sep_token]}
        digits = [vocab[d] for d in DIGITS]
    else:
        specials = special_token_ids(loaded.tokenizer)
        digits = digit_token_ids(loaded.tokenizer)
    return {
        "name": loaded.name,
        "builtin": loaded.builtin,
        "vocab_size": loaded.vocab_size(),
        "special_token_ids": specials,
        "digit_token_ids": digits,
        "time_sep": loaded.time_sep,
        "unk_token": loaded.unk_text,
        "added_tokens": loaded.added_tokens,
    }


__all__ = [
    "BUILTIN_NAME", "DEFAULT_SEP", "PAD_TOKEN", "UNK_TOKEN", "MASK_TOKEN", "SPECIAL_KEYS", "LoadedTokenizer",
    "build_numeric_tokenizer", "builtin_vocab", "load_tokenizer", "save_tokenizer", "save_builtin_tokenizer",
    "special_token_ids",
    "digit_token_ids", "vocab_size", "tokenizer_info", "is_builtin_id",
]
