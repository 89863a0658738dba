"""The built-in numeric tokenizer and the helpers training uses."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from msenc_lib.errors import ConfigError
from msenc_lib.preprocess.textformat import format_value
from msenc_lib.tokenizer import (
    BUILTIN_NAME,
    build_numeric_tokenizer,
    digit_token_ids,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    vocab_size,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_tokenizer(build_numeric_tokenizer(), path)
    return AutoTokenizer.from_pretrained(path)


def _random_text(rng: np.random.Generator, n_rows: int) -> str:
    values = np.concatenate([rng.normal(0, 100, 50), [np.nan, np.inf, -np.inf, -0.0, 1e20, 3e-9]])
    rows = []
    for _ in range(n_rows):
        picks = [format_value(float(v), 4) for v in rng.choice(values, 5)]
        picks += [str(int(rng.integers(-5000, 5000))), "<|UNK|>"]
        rows.append(",".join(rng.permutation(picks)))
    return "<|sep|>".join(rows)


def test_builtin_tokenizer_loads_through_autotokenizer_and_round_trips(saved):
    assert vocab_size(saved) == 23
    assert special_token_ids(saved) == {"pad": 0, "mask": 2, "unk": 1, "sep": 3}
    assert digit_token_ids(saved) == list(range(4, 14))
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = _random_text(rng, 30)
        enc = saved(text)["input_ids"]  # default add_special_tokens: still no BOS/EOS
        assert len(enc) == len(text.replace("<|sep|>", "#").replace("<|UNK|>", "#"))  # one token per char
        assert saved.decode(enc) == text
    assert saved("12")["input_ids"] == [5, 6]
    assert saved.decode([5, 17, 18, 14, 3, 1]) == "1e+.<|sep|><|UNK|>"


def test_unknown_characters_become_unk(saved):
    assert saved("1x2", add_special_tokens=False)["input_ids"] == [5, 1, 6]


def test_custom_time_separator_becomes_the_sep_token(tmp_path):
    lt = load_tokenizer(None, time_sep="<|t|>")
    assert lt.builtin and lt.time_sep == "<|t|>" and lt.tokenizer.sep_token == "<|t|>"
    save_tokenizer(lt.tokenizer, tmp_path / "t")
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    assert tok.decode(tok("1<|t|>2")["input_ids"]) == "1<|t|>2"
    empty = load_tokenizer(None, time_sep="")
    assert empty.time_sep == "" and empty.tokenizer.sep_token == "<|sep|>"  # the original's fallback


def test_hub_ids_fail_with_a_clear_message():
    with pytest.raises(ConfigError) as err:
        load_tokenizer("ibm-granite/granite-3.3-8b-base")
    assert "not a local folder" in str(err.value) and BUILTIN_NAME in str(err.value)


def test_patched_local_tokenizer_and_digit_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Whole-number word tokens: "0123456789" is one unknown word, not ten digit tokens.
    core = Tokenizer(models.WordLevel({"10": 0, "[UNK]": 1, "5": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(tmp_path / "w")
    lt = load_tokenizer(str(tmp_path / "w"))
    assert not lt.builtin
    assert lt.added_tokens == ["<|sep|>", "<|PAD|>", "<|MASK|>"]  # its own unk is kept
    ids = special_token_ids(lt.tokenizer)
    assert ids["unk"] == 1 and len(set(ids.values())) == 4 and set(ids) == {"pad", "mask", "unk", "sep"}
    assert digit_token_ids(lt.tokenizer) is None


def test_missing_special_token_is_named():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "?": 1}, unk_token="?")),
                                  unk_token="?")
    with pytest.raises(ConfigError, match=r"\['pad', 'mask', 'sep'\]"):
        special_token_ids(tok)


def test_transformers_free_save_equals_save_pretrained(tmp_path, saved):
    from msenc_lib.tokenizer import save_builtin_tokenizer

    save_builtin_tokenizer(tmp_path / "plain")
    plain = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert plain.get_vocab() == saved.get_vocab() and len(plain) == len(saved)
    text = _random_text(np.random.default_rng(5), 50)
    assert plain(text)["input_ids"] == saved(text)["input_ids"]
    assert special_token_ids(plain) == special_token_ids(saved)
