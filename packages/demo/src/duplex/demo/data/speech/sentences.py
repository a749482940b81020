"""Sentences to speak: a large offline corpus by default, or the user's own text.

The default corpus is harvested from the docstrings of the Python standard library that runs this
code: several thousand distinct plain-English sentences ("Return the current Thread object."),
with no new dependency, no network, and the same result on every machine with the same Python.
Its sources are parsed, never imported (importing the whole standard library has side effects),
and the result is cached under ``$XDG_CACHE_HOME/duplex/sentences/``.

Every corpus goes through the same filter: 4 to 20 words of ASCII letters (with inner apostrophes
and hyphens), commas and semicolons, one final ``.``, ``?`` or ``!``. What espeak-ng would spell
out or read as code (digits, identifiers, brackets, colons, abbreviations such as "e.g.") is
dropped rather than cleaned, so every kept sentence reads as a sentence.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from duplex.demo.data.speech.splits import (
    HELDOUT_FRACTION,
    Split,
    check_split,
    is_heldout_sentence,
    sentence_key,
)

MIN_WORDS, MAX_WORDS = 4, 20
# Bump when the harvest or the filter changes: the cache file name carries it.
RULES_VERSION = 1

_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*[,;]?")
_CAMEL = re.compile(r"[a-z][A-Z]")  # an identifier such as ``getAttribute``, not a word
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PARAGRAPH = re.compile(r"\n\s*\n")
# Standard library folders that hold tests, tools and vendored code rather than documented API.
_SKIPPED_FOLDERS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages", "__pycache__"}
)


def speakable(sentence: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """Whether ``sentence`` passes the corpus filter (see the module docstring)."""
    words = sentence.split()
    if not min_words <= len(words) <= max_words or not sentence[0].isupper() or sentence[-1] not in ".?!":
        return False
    *body, last = words
    last = last[:-1]
    return (
        all(_WORD.fullmatch(word) for word in body)
        and _WORD.fullmatch(last) is not None
        and last[-1].isalpha()  # no "word,." ending
        and not any(_CAMEL.search(word) for word in words)
    )


def _units(text: str) -> Iterator[str]:
    """Runs of text that end a sentence: each paragraph joined into one line, except a paragraph
    whose every line starts with a capital, which is one sentence per line (a list, a corpus file)."""
    for paragraph in _PARAGRAPH.split(text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if any(">>>" in line for line in lines):  # an interactive example
            continue
        if len(lines) > 1 and all(line[0].isupper() for line in lines):
            yield from lines
        elif lines:
            yield " ".join(lines)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (prose, or one sentence per line), in order, spacing normalised; a
    sentence without final punctuation (a line of a corpus file) gets a full stop. Not filtered."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    sentences = []
    for unit in _units(text):
        for sentence in _SENTENCE_END.split(unit):
            sentence = " ".join(sentence.split())
            if sentence:
                sentences.append(sentence if sentence[-1] in ".?!" else sentence + ".")
    return sentences


def corpus(texts: Iterable[str]) -> list[str]:
    """The speakable sentences of ``texts``, deduplicated (case and spacing aside), sorted."""
    kept: dict[str, str] = {}
    for text in texts:
        for sentence in split_sentences(text):
            if speakable(sentence):
                kept.setdefault(sentence_key(sentence), sentence)
    return sorted(kept.values())


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):  # a file for another Python, a stray encoding
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if docstring := ast.get_docstring(node):
                yield docstring


def harvest_stdlib(root: Path | None = None) -> list[str]:
    """The speakable sentences of the docstrings under ``root`` (the standard library by default)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(
        path for path in root.rglob("*.py") if not _SKIPPED_FOLDERS.intersection(path.relative_to(root).parts)
    )
    return corpus(docstring for path in files for docstring in _docstrings(path))


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = ".".join(map(str, sys.version_info[:3]))
    return base / "duplex" / "sentences" / f"stdlib-py{version}-rules{RULES_VERSION}.txt"


def stdlib_sentences() -> list[str]:
    """:func:`harvest_stdlib`, cached (a few seconds the first time, milliseconds after)."""
    cache = _cache_file()
    if cache.is_file():
        return cache.read_text(encoding="utf-8").splitlines()
    sentences = harvest_stdlib()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        partial.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        partial.replace(cache)  # atomic: a concurrent reader sees all of it or none
    except OSError:  # a read-only cache: harvest again next time
        pass
    return sentences


@dataclass(frozen=True)
class SentenceSource:
    """A named corpus of speakable sentences, split into train and held-out by a hash of each one."""

    name: str
    sentences: tuple[str, ...]
    heldout_fraction: float = HELDOUT_FRACTION

    @classmethod
    def stdlib(cls) -> SentenceSource:
        return cls(f"python-{'.'.join(map(str, sys.version_info[:3]))}-docstrings", tuple(stdlib_sentences()))

    @classmethod
    def from_text(cls, text: str, name: str = "text") -> SentenceSource:
        return cls(name, tuple(corpus([text])))

    @classmethod
    def from_file(cls, path: str | Path) -> SentenceSource:
        """The sentences of a UTF-8 text file: one sentence per line, or prose."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"text file {path} does not exist: pass --text a UTF-8 text file (one sentence per line, "
                "or prose)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"text file {path} is not UTF-8 text (byte {error.start}): pass a plain text file"
            ) from None
        source = cls.from_text(text, name=str(path))
        if not source.sentences:
            raise ValueError(
                f"no usable sentence in {path}: each needs {MIN_WORDS} to {MAX_WORDS} words of plain letters "
                "(commas and apostrophes allowed), a capital first letter and no digits or brackets"
            )
        return source

    def split(self, split: Split) -> tuple[str, ...]:
        """The sentences of ``split``, in the source's order; never empty."""
        heldout = check_split(split) == "heldout"
        chosen = tuple(s for s in self.sentences if is_heldout_sentence(s, self.heldout_fraction) == heldout)
        if not chosen:
            raise ValueError(
                f"the {split} split of {self.name} is empty ({len(self.sentences)} sentences, "
                f"{self.heldout_fraction:.0%} held out by hash): give a corpus of more sentences"
            )
        return chosen
