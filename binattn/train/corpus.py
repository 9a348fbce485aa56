"""``english-mix``: an offline English corpus of several registers, split by source.

Sources (installed by ``make install`` as Debian packages; nothing is fetched at run time):
  - WordNet 3.0 (``wordnet-base``, WordNet licence): usage examples (``everyday``) and glosses
    (``definitions``) of every synset in ``/usr/share/wordnet/data.*``;
  - fortune-mod's fortune files (``fortunes``, ``fortunes-min``; BSD licence): quotations,
    dialogue and prose (``quotes``);
  - the Python standard library's docstrings (``technical``, :func:`data.stdlib_sentences`).
Derived registers: ``questions`` (sentences ending with ``?`` from every source) and ``long``
(consecutive texts of one source joined to :data:`LONG_WORDS` words: about 100–160 tokens of
MiniLM's tokenizer, median ≈ 120).

The split is by **source**, never by sentence: a WordNet lexicographer file (a topic such as
``noun.food`` or ``verb.weather``; the large ``adj.all`` / ``adv.all`` files are cut into ten
offset ranges), a fortune file, or a top-level standard-library module is wholly either training
or held-out text (:data:`HELD_OUT`, :func:`is_held_out`). Every :class:`Text` names its source.

What it does not: tokenize (callers do), download anything, or rank texts by quality.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..errors import UserError
from .data import _SENTENCE_END, stdlib_module_sentences

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
REGISTERS = ("everyday", "definitions", "quotes", "questions", "technical", "long")
INSTALL_HINT = ("install the Debian packages wordnet-base and fortunes "
                "(`apt-get install wordnet-base fortunes`, run by `make install`)")
# lexicographer file numbers → names (WordNet's lexnames(5WN)); only the ones used here
LEXNAMES = dict(enumerate(
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl".split()))
SPLIT_BY_OFFSET = frozenset({"adj.all", "adv.all"})   # one topic-less file: ten offset ranges
FORTUNE_FILES = (
    "fortunes literature riddles computers cookie definitions education food goedel humorists "
    "kids law love magic medicine miscellaneous news paradoxum people pets platitudes "
    "pratchett science songs-poems sports startrek tao wisdom work").split()
# Held-out sources: everyday topics (food, feelings, weather, sport, travel, work, time) and a
# tenth of the topic-less adjectives/adverbs, five fortune files, a fifth of stdlib modules.
HELD_OUT = frozenset(
    "wordnet:noun.food wordnet:noun.feeling wordnet:noun.time wordnet:noun.event "
    "wordnet:verb.weather wordnet:verb.competition wordnet:verb.consumption wordnet:verb.motion "
    "wordnet:verb.emotion wordnet:adj.all#9 wordnet:adv.all#9 fortunes:food fortunes:sports "
    "fortunes:work fortunes:pets fortunes:love fortunes:riddles".split())
LONG_WORDS = (85, 105)
_WORDS = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class Text:
    """One unit of text, its register and the source (document) it comes from."""

    text: str
    register: str
    source: str


def is_held_out(source: str) -> bool:
    """Whether every text of ``source`` belongs to the held-out side."""
    if source.startswith("stdlib:"):
        return zlib.crc32(source.encode()) % 5 == 0
    return source in HELD_OUT


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise UserError(f"english-mix: {path} not found: {INSTALL_HINT} (missing: {package})")
    return path


def _clean(text: str) -> str:
    return " ".join(text.replace("``", '"').replace("''", '"').split())


def _is_text(text: str, min_words: int = 4, max_chars: int = 400) -> bool:
    words = _WORDS.findall(text)
    letters = sum(map(len, words))
    return (len(words) >= min_words and len(text) <= max_chars
            and letters >= 0.6 * len(text.replace(" ", "")))


def _wordnet_source(lexname: str, offset: int, size: int) -> str:
    if lexname in SPLIT_BY_OFFSET:
        return f"wordnet:{lexname}#{min(9, offset * 10 // max(size, 1))}"
    return f"wordnet:{lexname}"


def wordnet_texts(root: Path = WORDNET_DIR) -> Iterator[Text]:
    """Glosses (``definitions``) and quoted usage examples (``everyday``) of every synset."""
    for pos in ("noun", "verb", "adj", "adv"):
        path = _require(root / f"data.{pos}", "wordnet-base")
        size = path.stat().st_size
        with path.open(encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue   # the licence header
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                source = _wordnet_source(LEXNAMES[int(fields[1])], int(fields[0]), size)
                definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
                if _is_text(definition):
                    yield Text(_clean(definition), "definitions", source)
                for example in re.findall(r'"([^"]+)"', gloss):
                    if _is_text(example) and example[0].isalpha():
                        yield Text(_clean(example), "everyday", source)


def _fortune_entry(raw: str) -> Optional[str]:
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    while lines and lines[-1].lstrip().startswith(("--", "-- ")):
        lines.pop()   # drop the attribution
    if not lines or any(ln.startswith(("\t\t", "    ")) and len(ln.strip()) < 3 for ln in lines):
        return None
    text = _clean(" ".join(lines))
    return text if _is_text(text, 5, 600) else None


def fortune_texts(root: Path = FORTUNE_DIR) -> Iterator[Text]:
    """One ``quotes`` text per fortune of :data:`FORTUNE_FILES` (attribution lines dropped)."""
    _require(root / "fortunes", "fortunes-min")
    for name in FORTUNE_FILES:
        path = _require(root / name, "fortunes")
        for raw in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = _fortune_entry(raw)
            if text is not None:
                yield Text(text, "quotes", f"fortunes:{name}")


def stdlib_texts(modules: Optional[Iterable[str]] = None) -> Iterator[Text]:
    """Docstring sentences (``technical``), the source being the top-level module."""
    for module, sentence in stdlib_module_sentences(modules=modules):
        yield Text(sentence, "technical", f"stdlib:{module.split('.')[0]}")


def _questions(texts: list[Text]) -> Iterator[Text]:
    for t in texts:
        for sentence in _SENTENCE_END.split(t.text) if t.register != "everyday" else [t.text]:
            if sentence.endswith("?") and _is_text(sentence) and sentence[0].isupper():
                yield Text(sentence, "questions", t.source)


def _long(texts: list[Text]) -> Iterator[Text]:
    """Consecutive texts of one source joined until :data:`LONG_WORDS` words (natural ones kept)."""
    parts: list[str] = []
    source = ""
    lo, hi = LONG_WORDS
    for t in texts:
        if t.register == "definitions":
            continue
        if t.source != source:
            parts, source = [], t.source
        words = len(t.text.split())
        if words > hi:
            parts = []
            continue
        parts.append(t.text if t.text[-1] in ".!?" else t.text + ".")
        if sum(len(p.split()) for p in parts) >= lo:
            joined = " ".join(parts)
            if len(joined.split()) <= hi:
                yield Text(joined[0].upper() + joined[1:], "long", source)
            parts = []


def english_texts(wordnet_dir: Optional[Path] = None, fortune_dir: Optional[Path] = None,
                  modules: Optional[Iterable[str]] = None) -> list[Text]:
    """Every text of every register (deduplicated per register), in a deterministic order.
    The folders default to :data:`WORDNET_DIR` and :data:`FORTUNE_DIR`."""
    base = [*wordnet_texts(Path(wordnet_dir or WORDNET_DIR)),
            *fortune_texts(Path(fortune_dir or FORTUNE_DIR)), *stdlib_texts(modules)]
    seen: dict[tuple[str, str], Text] = {}
    for t in [*base, *_questions(base), *_long(base)]:
        seen.setdefault((t.register, t.text), t)
    return list(seen.values())


def english_split(texts: list[Text], held_out: bool) -> dict[str, list[Text]]:
    """The texts of one side of the source split, per register (:data:`REGISTERS` order)."""
    out: dict[str, list[Text]] = {r: [] for r in REGISTERS}
    for t in texts:
        if is_held_out(t.source) == held_out:
            out[t.register].append(t)
    return out


def _interleave(pools: list[list[str]]) -> list[str]:
    """Round-robin over ``pools``: any prefix of the result is balanced between them."""
    return [pool[i] for i in range(max(map(len, pools), default=0)) for pool in pools
            if i < len(pool)]


def _sample(texts: list[Text], count: int, rng: random.Random) -> list[str]:
    """``count`` texts, shuffled, balanced between source families (wordnet/fortunes/stdlib)."""
    families: dict[str, list[str]] = {}
    for t in texts:
        families.setdefault(t.source.split(":")[0], []).append(t.text)
    for pool in families.values():
        rng.shuffle(pool)
    return _interleave([families[k] for k in sorted(families)])[:count]


def english_mix(per_register: int = 4000, seed: int = 0,
                texts: Optional[list[Text]] = None) -> list[str]:
    """Training text for ``--data english-mix``: up to ``per_register`` training-side texts of
    each register (balanced between source families), interleaved (any prefix is balanced)."""
    by_register = english_split(english_texts() if texts is None else texts, held_out=False)
    rng = random.Random(seed)
    mixed = _interleave([_sample(by_register[r], per_register, rng) for r in REGISTERS])
    if not mixed:
        raise UserError(f"english-mix: no training text found; {INSTALL_HINT}")
    return mixed


def held_out_registers(per_register: int = 256, seed: int = 0,
                       texts: Optional[list[Text]] = None) -> dict[str, list[str]]:
    """Up to ``per_register`` held-out texts per register (a seeded sample balanced between
    source families), from held-out sources only."""
    by_register = english_split(english_texts() if texts is None else texts, held_out=True)
    rng = random.Random(seed + 1)
    return {r: _sample(by_register[r], per_register, rng) for r in REGISTERS}
