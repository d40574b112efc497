from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from fewlabel.augment.text import (
    POLICIES,
    OneOf,
    SynonymReplacement,
    build_text_policy,
    random_deletion,
    random_swap,
    synonym_replacement,
    wordnet_available,
    wordnet_synonyms,
)
from fewlabel.errors import FewlabelError

LONG = " ".join(f"w{i}" for i in range(2000))


def test_random_deletion_rate_on_long_input() -> None:
    augment = random_deletion(0.3, rng=random.Random(0))
    out = augment(LONG).split()
    assert 0.27 < 1 - len(out) / 2000 < 0.33
    positions = [int(w[1:]) for w in out]
    assert positions == sorted(positions)  # deletion keeps word order
    assert random_deletion(0.0, rng=0)(LONG) == LONG


def test_random_deletion_never_empties_a_text() -> None:
    augment = random_deletion(0.99, rng=random.Random(1))
    for _ in range(50):
        out = augment("just three words")
        assert len(out.split()) >= 1 and set(out.split()) <= {"just", "three", "words"}
    assert augment("") == ""
    with pytest.raises(FewlabelError, match=r"\[0, 1\)"):
        random_deletion(1.0)


def test_random_swap_moves_at_most_two_words_per_swap() -> None:
    augment = random_swap(5, rng=random.Random(0))
    words = LONG.split()
    out = augment(LONG).split()
    assert sorted(out) == sorted(words)  # a permutation: nothing lost or added
    moved = sum(a != b for a, b in zip(out, words, strict=True))
    assert 2 <= moved <= 10
    assert random_swap(3, rng=0)("alone") == "alone"
    counts = Counter(random_swap(1, rng=random.Random(2))("a b") for _ in range(10))
    assert counts == {"b a": 10}  # two words: a swap always exchanges them


def test_policies_are_deterministic_for_a_seed() -> None:
    for name in ("deletion", "swap", "eda"):
        first = build_text_policy(name, rng=random.Random(7))
        second = build_text_policy(name, rng=random.Random(7))
        outputs = [first(LONG) for _ in range(3)]
        assert outputs == [second(LONG) for _ in range(3)]
        assert len(set(outputs)) == 3  # but each call draws new randomness
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert random_swap(3, rng=g1)(LONG) == random_swap(3, rng=g2)(LONG)
    assert random_swap(3, rng=torch.Generator().manual_seed(4))(LONG) != random_swap(3, rng=g1)(LONG)


def test_none_policy_and_unknown_name() -> None:
    assert build_text_policy("none")("  keep   as is ") == "  keep   as is "  # untouched, whitespace included
    assert build_text_policy("swap", rng=0)("  two   words ") == "words two"  # split on any whitespace
    with pytest.raises(FewlabelError, match="unknown text augmentation"):
        build_text_policy("backtranslate")
    assert set(POLICIES) == {"none", "deletion", "swap", "synonym", "eda"}


def test_synonym_replacement_logic_with_a_given_lexicon() -> None:
    lexicon = {"good": ["fine", "decent"], "movie": ["film"], "plot": []}
    augment = SynonymReplacement(n=2, rng=random.Random(0), synonyms=lambda w: lexicon.get(w, []))
    text = "the good movie has a good plot"
    for _ in range(20):
        out = augment(text).split()
        assert len(out) == 7
        assert out[0] == "the" and out[3] == "has"  # stop words are never replaced
        assert out[1] == out[5] and out[1] in {"fine", "decent"}  # every occurrence gets the same synonym
        assert out[2] == "film" and out[6] == "plot"


def test_synonym_replacement_uses_wordnet_or_says_how_to_install_it() -> None:
    if wordnet_available():
        augment = synonym_replacement(1, rng=random.Random(0))
        assert augment("a good movie") != "a good movie"
        assert "synonym" in build_text_policy("eda").describe()
    else:
        with pytest.raises(FewlabelError, match="pip install nltk") as info:
            synonym_replacement(1)
        assert "\n" not in str(info.value)
        with pytest.raises(FewlabelError, match=r"nltk\.downloader wordnet"):
            build_text_policy("synonym")
        eda = build_text_policy("eda")
        assert isinstance(eda, OneOf) and len(eda.policies) == 2
        assert "synonym replacement unavailable" in eda.describe()


def write_tiny_wordnet(folder: Path) -> Path:
    """A two-synset WordNet 3.0 database (the format of Debian's wordnet-base: no lexnames file)."""
    folder.mkdir()
    for name in ("adj.exc", "adv.exc", "noun.exc", "verb.exc", "index.adj", "index.adv", "index.verb",
                 "data.adj", "data.adv", "data.verb"):
        (folder / name).write_text("")
    first = "00000000 06 n 02 film 0 movie 0 000 | a form of entertainment\n"
    second = f"{len(first):08d} 06 n 01 plot 0 000 | the story\n"
    (folder / "data.noun").write_text(first + second)
    (folder / "index.noun").write_text(f"film n 1 0 1 0 00000000\nmovie n 1 0 1 0 00000000\n"
                                       f"plot n 1 0 1 0 {len(first):08d}\n")
    return folder


def test_synonyms_from_a_wordnet_database_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nltk", reason="the WordNet reader is nltk's")
    monkeypatch.setenv("FEWLABEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEWLABEL_WORDNET", str(write_tiny_wordnet(tmp_path / "wn")))
    lookup = wordnet_synonyms()
    assert lookup("movie") == ["film"] and lookup("film") == ["movie"] and lookup("plot") == []
    (copy,) = (tmp_path / "cache" / "wordnet").iterdir()  # one copy per source folder
    assert {f.name for f in copy.iterdir()} == {f.name for f in (tmp_path / "wn").iterdir()} | {"lexnames"}
    assert all(f.stat().st_mode & 0o022 == 0 for f in copy.iterdir())  # nltk refuses group/world-writable files
    lexnames = (copy / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[6] == "06\tnoun.artifact\t1" and lexnames[44] == "44\tadj.ppl\t3"
    augment = synonym_replacement(1, rng=random.Random(0))  # the default lookup reads FEWLABEL_WORDNET too
    assert augment("a movie plot") == "a film plot"


def test_wordnet_folder_that_is_not_one_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nltk", reason="the WordNet reader is nltk's")
    monkeypatch.setenv("FEWLABEL_WORDNET", str(tmp_path))
    with pytest.raises(FewlabelError, match=r"FEWLABEL_WORDNET=.* is not a WordNet database folder") as info:
        wordnet_synonyms()
    assert "\n" not in str(info.value)
