"""WordNet parsing: a tiny fixture in WordNet's own format, plus the real Debian files when installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels.errors import CorruptArtifactError, InvalidInputError, NotFoundError
from models.text_data import (
    LEXNAMES,
    WORDNET_DIR,
    load_wordnet,
    parse_data_line,
    synonym_gloss_pairs,
)

LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2   \n"
NOUN = (
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which"
    " is perceived or known or inferred to have its own distinct existence (living or nonliving)  \n"
    "02084071 05 n 07 dog 0 domestic_dog 0 Canis_familiaris 0 frump 1 cad 2 bounder 0 blackguard 0"
    ' 001 @ 02083346 n 0000 | a member of the genus Canis; "the dog barked all night"  \n'
)
VERB = (
    "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 001 $ 00002325 v 0000"
    ' 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better"  \n'
)
ADJ = (
    "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance;"
    ' "abounding confidence"; "whiskey galore"  \n'
)


@pytest.fixture
def wordnet_dir(tmp_path: Path) -> Path:
    for part, body in {"noun": NOUN, "verb": VERB, "adj": ADJ, "adv": ""}.items():
        (tmp_path / f"data.{part}").write_text(LICENCE + body, encoding="utf-8")
    return tmp_path


def test_parses_the_fixture(wordnet_dir: Path) -> None:
    synsets = load_wordnet(wordnet_dir)
    assert [s.id for s in synsets] == ["00001740-n", "02084071-n", "00001740-v", "00014358-s"]
    dog = synsets[1]
    assert dog.lemmas[:3] == ("dog", "domestic dog", "Canis familiaris") and len(dog.lemmas) == 7
    assert dog.lexname == "noun.animal" and dog.gloss.endswith('"the dog barked all night"')
    assert dog.definition == "a member of the genus Canis"
    assert synsets[0].lexname == "noun.Tops" and synsets[2].lexname == "verb.body"
    assert synsets[3].lemmas == ("abounding", "galore")  # the "(ip)" marker is stripped
    assert synsets[0].definition.endswith("(living or nonliving)")


def test_synonym_gloss_pairs(wordnet_dir: Path) -> None:
    pairs = synonym_gloss_pairs(load_wordnet(wordnet_dir), min_lemmas=2)
    assert pairs.ids == ["02084071-n", "00001740-v", "00014358-s"] and len(pairs) == 3
    assert pairs.queries[1] == "breathe, take a breath, respire, suspire"
    assert pairs.documents[1] == "draw air into, and expel out of, the lungs"
    assert pairs.labels == ["noun.animal", "verb.body", "adj.all"]
    with_examples = synonym_gloss_pairs(load_wordnet(wordnet_dir), examples=True)
    assert '"whiskey galore"' in with_examples.documents[2]
    assert len(synonym_gloss_pairs(load_wordnet(wordnet_dir), min_lemmas=1)) == 4
    with pytest.raises(InvalidInputError):
        synonym_gloss_pairs([], min_lemmas=0)


def test_errors_name_the_file_and_the_fix(wordnet_dir: Path, tmp_path: Path) -> None:
    (wordnet_dir / "data.adv").write_text(LICENCE + "00001740 02 r 05 only_two 0 words 0 | gloss\n")
    with pytest.raises(CorruptArtifactError, match=r"data\.adv:3"):
        load_wordnet(wordnet_dir)
    with pytest.raises(NotFoundError, match="ensure-debian-packages.sh wordnet-base"):
        load_wordnet(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="not a synset line"):
        parse_data_line("no gloss here")
    with pytest.raises(InvalidInputError, match="malformed"):
        parse_data_line("00001740 03 n zz entity 0 000 | gloss")


@pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason="WordNet is not installed: run scripts/ensure-debian-packages.sh wordnet-base",
)
def test_the_real_wordnet_3_0() -> None:
    synsets = load_wordnet()
    assert len(synsets) == 117_659 and len({s.id for s in synsets}) == 117_659
    assert {s.lexname for s in synsets} == set(LEXNAMES)
    pairs = synonym_gloss_pairs(synsets)
    assert len(pairs) == 53_811 and all(pairs.documents) and all(", " in q for q in pairs.queries)
