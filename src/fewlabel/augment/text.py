"""Text augmentation policies (EDA, Wei & Zou 2019): random deletion, random swap, WordNet synonym replacement.

A policy is a callable ``str -> str`` that draws from its own ``rng`` (a ``random.Random``; a seed, a
``torch.Generator`` or ``None`` also work), so a run is reproducible from its seed. In DataLoader workers each
copy of a policy reseeds itself on first use from its seeded state and the worker's seed
(``torch.utils.data.get_worker_info().seed``: the loader's base seed + the worker id), so workers draw different
augmentations and the same seeds still give the same ones; in the main process (``num_workers=0``) nothing is
reseeded. Texts are split on whitespace and re-joined with single spaces.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import get_worker_info

from fewlabel.errors import FewlabelError
from fewlabel.names import TEXT_POLICIES

POLICIES = TEXT_POLICIES
WORDNET_INSTALL = "pip install nltk, then python -m nltk.downloader wordnet or apt-get install wordnet-base"
DEBIAN_WORDNET = "/usr/share/wordnet"

# EDA's stop words: never replaced by synonyms (their "synonyms" rarely keep the meaning).
_STOP_WORDS_TEXT = (
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while "
    "of at by for with about against between into through during before after above below to from up down in out "
    "on off over under again further then once here there when where why how all any both each few more most "
    "other some such no nor not only own same so than too very s t can will just don should now"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

RngLike = random.Random | torch.Generator | int | None


class _Rng:
    """Adapts the accepted seeds to one ``random.Random`` per call (a torch generator seeds a fresh one).

    A DataLoader copies the policy into every worker with the same random state; on its first call in a worker
    the copy reseeds from that state and the worker's seed, once per worker process.
    """

    def __init__(self, rng: RngLike):
        self.generator = rng if isinstance(rng, torch.Generator) else None
        if isinstance(rng, random.Random):
            self.rng = rng
        else:
            self.rng = random.Random(rng if isinstance(rng, int) else None)
        self._worker: tuple[int, int] | None = None  # (process id, worker seed) this copy was reseeded for

    def get(self) -> random.Random:
        worker = get_worker_info()
        if worker is not None and self._worker != (os.getpid(), worker.seed):
            self._reseed_for_worker(worker.seed)
        if self.generator is not None:
            self.rng.seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        return self.rng

    def _reseed_for_worker(self, worker_seed: int) -> None:
        """Mix the worker's seed (the loader's base seed + worker id; the base is drawn per epoch from the loader's
        generator, else torch's global RNG) and the distributed rank into the state every copy shares."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        if self.generator is not None:
            shared = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self.generator = torch.Generator().manual_seed(_mix(shared, worker_seed, rank))
        else:
            self.rng.seed(_mix(self.rng.getrandbits(64), worker_seed, rank))
        self._worker = (os.getpid(), worker_seed)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class TextAugmentation:
    """Base of the policies: holds the random source (reseeded on first use in each DataLoader worker)."""

    name = "identity"

    def __init__(self, rng: RngLike = None):
        self._source = _Rng(rng)

    @property
    def rng(self) -> random.Random:
        return self._source.rng

    def __call__(self, text: str) -> str:
        words = text.split()
        return " ".join(self.apply(words, self._source.get())) if words else text

    def apply(self, words: list[str], rng: random.Random) -> list[str]:
        return words

    def describe(self) -> str:
        return self.name


class Identity(TextAugmentation):
    """The ``none`` policy: returns the text exactly as given (no whitespace normalisation either)."""

    name = "none"

    def __call__(self, text: str) -> str:
        return text


class RandomDeletion(TextAugmentation):
    """Delete each word with probability ``p``; at least one word always survives so no text becomes empty."""

    def __init__(self, p: float = 0.1, rng: RngLike = None):
        if not 0.0 <= p < 1.0:
            raise FewlabelError(f"random deletion probability {p} must be in [0, 1)")
        super().__init__(rng)
        self.p = p
        self.name = f"deletion(p={p:g})"

    def apply(self, words: list[str], rng: random.Random) -> list[str]:
        kept = [w for w in words if rng.random() >= self.p]
        return kept or [words[rng.randrange(len(words))]]


class RandomSwap(TextAugmentation):
    """Swap two randomly chosen word positions, ``n`` times."""

    def __init__(self, n: int = 1, rng: RngLike = None):
        if n < 0:
            raise FewlabelError(f"random swap count {n} must be >= 0")
        super().__init__(rng)
        self.n = n
        self.name = f"swap(n={n})"

    def apply(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        if len(words) < 2:
            return words
        for _ in range(self.n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return words


# WordNet 3.0's lexicographer files (lexnames(5WN)); Debian's wordnet-base ships the database without this index.
_LEXNAMES = ("adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a unique temporary file, then rename: concurrent runs never read or clobber half a file.

    Files are made 0644: nltk refuses to read group- or world-writable corpus files (a umask of 002 makes them).
    """
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _readable_wordnet_folder(folder: Path) -> Path:
    """``folder`` itself when complete; else a cache copy of its files plus the missing lexnames.

    A copy, not links: nltk refuses to read files that resolve outside the corpus folder. One copy per source
    folder (keyed by its path), refreshed when a source file's size or modification time changes.
    """
    if (folder / "lexnames").is_file():
        return folder
    from fewlabel.data.resolve import cache_dir

    copy = cache_dir() / "wordnet" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    copy.mkdir(parents=True, exist_ok=True, mode=0o755)
    for file in folder.iterdir():
        target = copy / file.name
        if not file.is_file():
            continue
        source_stat = file.stat()
        if target.is_file():
            stat = target.stat()
            if stat.st_size == source_stat.st_size and stat.st_mtime == source_stat.st_mtime:
                continue
        _write_atomically(target, lambda tmp, file=file: shutil.copy2(file, tmp))
    lexnames = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
    if not (copy / "lexnames").is_file() or (copy / "lexnames").read_text(encoding="utf-8") != lexnames:
        _write_atomically(copy / "lexnames", lambda tmp: tmp.write_text(lexnames, encoding="utf-8"))
    return copy


def _wordnet_reader() -> Any:
    """The WordNet to read synonyms from: the WordNet 3.0 database folder named by ``FEWLABEL_WORDNET`` when
    set; else nltk's own corpus (nltk_data); else Debian's ``wordnet-base`` package (no download needed)."""
    folder = os.environ.get("FEWLABEL_WORDNET") or None
    return _cached_wordnet_reader(folder, os.environ.get("FEWLABEL_CACHE", ""))


@functools.lru_cache(maxsize=4)
def _cached_wordnet_reader(folder: str | None, cache: str) -> Any:
    """Parsing WordNet takes seconds: one reader per (folder, cache) and process."""
    try:
        import nltk
        from nltk.corpus import wordnet
    except ImportError:
        raise FewlabelError(f"synonym augmentation needs nltk with WordNet: {WORDNET_INSTALL}") from None
    if folder is None:
        try:
            wordnet.synsets("good")
            return wordnet
        except (LookupError, OSError):  # absent, or refused by nltk's file checks: try Debian's copy
            folder = DEBIAN_WORDNET
            if not Path(folder, "data.noun").is_file():
                raise FewlabelError(f"synonym augmentation needs a WordNet corpus: {WORDNET_INSTALL}") from None
    elif not Path(folder, "data.noun").is_file():
        raise FewlabelError(f"FEWLABEL_WORDNET={folder} is not a WordNet database folder (no data.noun); "
                            f"point it at one or unset it ({WORDNET_INSTALL})")
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # no mapping onto nltk's own 'wordnet' corpus (absent here): English lookups need none

    try:
        readable = _readable_wordnet_folder(Path(folder).resolve())
        if str(readable) not in nltk.data.path:
            nltk.data.path.append(str(readable))  # nltk only reads corpora under its data path
        with warnings.catch_warnings():  # "multilingual functions are not available": we only look up English
            warnings.simplefilter("ignore", UserWarning)
            reader = EnglishWordNet(str(readable), None)
        reader.synsets("good")
    except Exception as exc:  # nltk raises OSError, LookupError, WordNetError, AssertionError on bad files
        message = " ".join(str(exc).split())[:300]
        raise FewlabelError(f"cannot read WordNet from {folder}: {message}; {WORDNET_INSTALL}") from None
    return reader


def wordnet_synonyms() -> Callable[[str], list[str]]:
    """A WordNet synonym lookup; a one-line error with the install command when nltk or WordNet is missing."""
    wordnet = _wordnet_reader()

    def lookup(word: str) -> list[str]:
        names = set()
        for synset in wordnet.synsets(word):
            for lemma in synset.lemmas():
                name = re.sub(r"[^a-z ]", "", lemma.name().replace("_", " ").replace("-", " ").lower()).strip()
                if name and name != word:
                    names.add(name)
        return sorted(names)  # sorted: set order varies between processes, which would break seeding

    return lookup


def wordnet_available() -> bool:
    try:
        wordnet_synonyms()
    except FewlabelError:
        return False
    return True


class SynonymReplacement(TextAugmentation):
    """Replace up to ``n`` distinct non-stop-words that have synonyms by a random synonym (WordNet by default)."""

    def __init__(self, n: int = 1, rng: RngLike = None, synonyms: Callable[[str], Sequence[str]] | None = None):
        if n < 0:
            raise FewlabelError(f"synonym replacement count {n} must be >= 0")
        super().__init__(rng)
        self.n = n
        self.synonyms = synonyms if synonyms is not None else wordnet_synonyms()
        self.name = f"synonym(n={n})"

    def apply(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        candidates = sorted({w.lower() for w in words if w.isalpha() and w.lower() not in STOP_WORDS})
        rng.shuffle(candidates)
        replaced = 0
        for candidate in candidates:
            if replaced >= self.n:
                break
            options = list(self.synonyms(candidate))
            if not options:
                continue
            choice = rng.choice(options)
            words = [choice if w.lower() == candidate else w for w in words]
            replaced += 1
        return " ".join(words).split()  # multi-word synonyms become separate words


class OneOf(TextAugmentation):
    """Apply one of ``policies``, chosen uniformly per call, as EDA does per augmented sentence."""

    def __init__(self, policies: Sequence[TextAugmentation], rng: RngLike = None, note: str = ""):
        if not policies:
            raise FewlabelError("OneOf needs at least one text augmentation")
        super().__init__(rng)
        self.policies = list(policies)
        self.name = "one of " + ", ".join(p.name for p in self.policies) + (f" ({note})" if note else "")

    def apply(self, words: list[str], rng: random.Random) -> list[str]:
        return rng.choice(self.policies).apply(words, rng)


def random_deletion(p: float = 0.1, rng: RngLike = None) -> RandomDeletion:
    return RandomDeletion(p, rng)


def random_swap(n: int = 1, rng: RngLike = None) -> RandomSwap:
    return RandomSwap(n, rng)


def synonym_replacement(n: int = 1, rng: RngLike = None) -> SynonymReplacement:
    return SynonymReplacement(n, rng)


def build_text_policy(name: str, rng: RngLike = None, p: float = 0.1, n: int = 1) -> TextAugmentation:
    """One of :data:`POLICIES`. ``eda`` picks deletion, swap or (when WordNet is installed) synonym per text;
    ``describe()`` says when synonym replacement was left out."""
    if name not in POLICIES:
        raise FewlabelError(f"unknown text augmentation '{name}'; choose one of {', '.join(POLICIES)}")
    if name == "none":
        return Identity(rng)
    if name == "deletion":
        return RandomDeletion(p, rng)
    if name == "swap":
        return RandomSwap(n, rng)
    if name == "synonym":
        return SynonymReplacement(n, rng)
    # The parts draw from the OneOf's random source (it passes its rng to ``apply``), so they need no seed.
    parts: list[TextAugmentation] = [RandomDeletion(p), RandomSwap(n)]
    note = ""
    if wordnet_available():
        parts.append(SynonymReplacement(n))
    else:
        note = f"synonym replacement unavailable: {WORDNET_INSTALL}"
    return OneOf(parts, rng, note=note)
