"""The espeak-ng voices clips are spoken in: an English accent plus a voice variant.

The accent sets the pronunciation (``en-us``, ``en-gb-scotland``, ...), the variant the speaker:
pitch, formants, breathiness (``m3``, ``f2``, ``klatt4``, ``Annie``, ...). Variants that sound
like effects rather than people (robots, echo chambers, whispers, a demon) are left out.

Held-out voices are for evaluation only: every voice whose variant is held out, in any accent
(the held-out accents included). Training uses the other variants in the other accents, so a
held-out clip is always a speaker, and sometimes also an accent, that training never heard.
Variants that are near copies of each other (``iven`` .. ``iven4``, ``Henrique`` and ``Hugo``) sit
on the same side, so a held-out voice has no twin in training; ``klatt6`` is left out, it speaks
exactly as ``klatt``. Accents are named so that espeak-ng applies the variant: ``en-gb+f2`` is
plain ``en-gb``, the British voice is ``en``.
"""

from __future__ import annotations

from dataclasses import dataclass

from duplex.demo.data.speech.splits import Split, check_split

TRAIN_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
HELDOUT_ACCENTS = ("en-029", "en-us-nyc")

FEMALE_VARIANTS = (
    "Alicia", "aunty", "belinda", "f1", "f2", "f3", "f4", "grandma", "linda", "steph", "steph2",
    "steph3", "anika",
)  # fmt: skip
MALE_VARIANTS = (
    "Alex", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky",
    "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "adam", "antonio", "benjamin", "boris",
    "croak", "david", "ed", "edward", "edward2", "grandpa", "gustave", "iven", "iven2", "iven3",
    "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt4", "klatt5", "m1", "m2",
    "m3", "m4", "m5", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul",
    "pedro", "rob", "robert", "sandro", "shelby", "victor",
)  # fmt: skip
HELDOUT_FEMALE_VARIANTS = ("Andrea", "Annie", "f5")
HELDOUT_MALE_VARIANTS = ("m6", "travis", "quincy", "Storm", "klatt3")


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    female: bool

    @property
    def name(self) -> str:
        """The espeak-ng ``-v`` argument."""
        return f"{self.accent}+{self.variant}"


def _voices(accents: tuple[str, ...], female: tuple[str, ...], male: tuple[str, ...]) -> tuple[Voice, ...]:
    return tuple(
        Voice(accent, variant, is_female)
        for accent in accents
        for is_female, variants in ((True, female), (False, male))
        for variant in variants
    )


TRAIN_VOICES = _voices(TRAIN_ACCENTS, FEMALE_VARIANTS, MALE_VARIANTS)
HELDOUT_VOICES = _voices(TRAIN_ACCENTS + HELDOUT_ACCENTS, HELDOUT_FEMALE_VARIANTS, HELDOUT_MALE_VARIANTS)


def voices(split: Split) -> tuple[Voice, ...]:
    """The voices clips of ``split`` are spoken in."""
    return TRAIN_VOICES if check_split(split) == "train" else HELDOUT_VOICES
