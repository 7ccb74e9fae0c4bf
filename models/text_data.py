"""Real labelled text that needs no hub: WordNet 3.0 synsets, parsed from Debian's ``wordnet-base``.

Install the files with ``scripts/ensure-debian-packages.sh wordnet-base`` (or ``apt-get install
wordnet-base``); they land in ``/usr/share/wordnet``. NLTK's reader refuses that layout, and the
format is simple, so ``data.{noun,verb,adj,adv}`` are parsed here directly. A data line is::

    offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt [pointers...] [frames] | gloss

Lines that start with two spaces are the licence header.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")
INSTALL = "install it with: scripts/ensure-debian-packages.sh wordnet-base (Debian: apt-get install -y wordnet-base)"
# WordNet 3.0's ``lexnames``: the lexicographer file number -> its class (45 classes).
LEXNAMES = (  # noqa: SIM905 (45 names on 7 lines, not 45)
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
_SYNTACTIC_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers: "galore(ip)"


@dataclasses.dataclass(frozen=True)
class Synset:
    """One WordNet synset: ``id`` is ``"<offset>-<ss_type>"`` (e.g. ``"02084071-n"``)."""

    id: str
    lemmas: tuple[str, ...]  # underscores as spaces, markers stripped: ("domestic dog", "dog")
    gloss: str  # definition, then any quoted examples: 'a member of ...; "the dog barked"'
    lexname: str  # the lexicographer class, one of LEXNAMES: "noun.animal"

    @property
    def definition(self) -> str:
        """The gloss without its quoted examples (which often contain the lemmas themselves)."""
        return self.gloss.split('; "', 1)[0].removesuffix(";").strip()


def parse_data_line(line: str) -> Synset:
    """One line of a ``data.*`` file -> a :class:`Synset`; InvalidInputError on a malformed line."""
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 4:
        raise InvalidInputError(f"not a synset line: {line[:60]!r}")
    try:
        offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
        count = int(fields[3], 16)  # the word count is two hex digits
    except ValueError:
        raise InvalidInputError(f"malformed synset line: {line[:60]!r}") from None
    words = fields[4 : 4 + 2 * count : 2]  # each word is followed by its lex_id
    if len(words) != count or not 0 <= lex_filenum < len(LEXNAMES) or len(offset) != 8:
        raise InvalidInputError(f"malformed synset line: {line[:60]!r}")
    lemmas = tuple(_SYNTACTIC_MARKER.sub("", w).replace("_", " ") for w in words)
    return Synset(f"{offset}-{ss_type}", lemmas, gloss.strip(), LEXNAMES[lex_filenum])


def read_synsets(path: Path) -> Iterator[Synset]:
    """The synsets of one ``data.*`` file, skipping the licence header."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            try:
                yield parse_data_line(line)
            except InvalidInputError as e:
                raise CorruptArtifactError(f"{path}:{number}: {e}") from e


def load_wordnet(directory: Path | None = None, parts: Sequence[str] = PARTS) -> list[Synset]:
    """All synsets of ``parts`` (117,659 for WordNet 3.0's four files), in file order."""
    directory = WORDNET_DIR if directory is None else Path(directory)
    paths = [directory / f"data.{part}" for part in parts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise NotFoundError(f"the WordNet data files {missing} are not there", fix=INSTALL)
    return [synset for path in paths for synset in read_synsets(path)]


@dataclasses.dataclass(frozen=True)
class SynonymGlossPairs:
    """Aligned rows for "synonym set -> definition" retrieval: query i's answer is document i."""

    ids: list[str]
    queries: list[str]  # the synonyms joined: "domestic dog, dog, Canis familiaris"
    documents: list[str]  # the definition (with the examples only if asked for)
    labels: list[str]  # the lexname class, for per-class breakdowns

    def __len__(self) -> int:
        return len(self.ids)


def synonym_gloss_pairs(
    synsets: Sequence[Synset] | None = None, *, min_lemmas: int = 2, examples: bool = False
) -> SynonymGlossPairs:
    """Synsets with at least ``min_lemmas`` lemmas as (synonyms, definition) pairs (53,811 at 2).

    Examples are left out by default: they usually quote a lemma, which would make retrieval lexical.
    """
    if min_lemmas < 1:
        raise InvalidInputError(f"min_lemmas must be >= 1, got {min_lemmas}")
    kept = [
        s for s in (load_wordnet() if synsets is None else synsets) if len(s.lemmas) >= min_lemmas
    ]
    return SynonymGlossPairs(
        ids=[s.id for s in kept],
        queries=[", ".join(s.lemmas) for s in kept],
        documents=[s.gloss if examples else s.definition for s in kept],
        labels=[s.lexname for s in kept],
    )
