"""Built-in generated reading-comprehension stories: the embedded default dataset.

Why generate instead of ship a dataset: the laptop default must work offline, at any size, with
no licence questions, and every answer must be checkable by quoting the story. Each story is a
short day-trip narrative (about 150-400 words) built from random facts — people, towns, objects,
counts, clock times and a sequence of errands. Every fact has a *twin* of the same kind that the
story also mentions (a second person, a second town, a second time…), and the twin is the
distractor. So the two positions of a question look alike to a judge who has not read the story
(chance accuracy), while a quote settles the question.

Determinism: story ``i`` of seed ``s`` is drawn from its own ``random.Random`` seeded from
``(s, i)``, so it does not depend on how many stories are generated or on the global RNG. Stories,
not questions, are split: index ``i`` goes to train when ``i % 10 < 8``, val when it is 8, test
when it is 9 (80/10/10).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from debate_lightning.data.question import SPLITS, Question, stable_id

SOURCE = "synthetic"

WOMEN = ("Ada", "Beatrice", "Clara", "Dora", "Edith", "Flora", "Greta", "Hazel", "Iris", "June",
         "Lena", "Mabel", "Nora", "Olive", "Pearl", "Rosa", "Stella", "Tilda", "Vera", "Wren")
MEN = ("Albert", "Bruno", "Cyril", "Dexter", "Edwin", "Felix", "Gideon", "Hugo", "Ivan", "Jasper",
       "Leon", "Milo", "Nathan", "Oscar", "Percy", "Rufus", "Silas", "Tobias", "Victor", "Walter")
TOWNS = ("Ashford", "Brackenby", "Coldwater", "Dunmere", "Eastwick", "Fernhollow", "Greyhaven",
         "Hollin Cross", "Kettlewell", "Larkfield", "Millbrook", "Northam", "Oakridge", "Pennick",
         "Quarry End", "Redmarsh", "Saltcombe", "Thornbury", "Upwater", "Westerleigh", "Yarrow")
OBJECTS = ("a brass key", "a blue umbrella", "a wooden flute", "a leather notebook",
           "a silver compass", "a jar of honey", "a green wool scarf", "a pocket watch",
           "a paper lantern", "a map of the coast", "a clay teapot", "a pair of gloves", "a red kite",
           "a tin whistle", "a bundle of letters", "a small telescope", "a basket of pears",
           "a framed photograph", "a cake tin", "a straw hat")
GOODS = ("apples", "candles", "eggs", "postcards", "buttons", "oranges", "pencils", "jars of jam",
         "spools of thread", "bars of soap", "lemons", "envelopes")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve")
PLACES = ("the market square", "the old library", "the harbour wall", "the bakery on Mill Lane",
          "the town hall steps", "the railway café", "the bandstand in the park", "the post office")
ERRANDS = ("posted a parcel", "visited the clock museum", "had lunch at a small inn",
           "bought a newspaper", "returned a book to the library", "watched the boats in the harbour",
           "had a haircut", "called on an old teacher", "climbed the church tower",
           "collected a mended bicycle", "looked at paintings in the gallery", "fed the ducks in the park",
           "sent a telegram", "tried on a new coat")
VEHICLES = ("train", "bus", "coach")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
SCENERY = (
    "Outside the window, fields of barley gave way to low, grey hills.",
    "A light rain fell for a while and then stopped, leaving the road shining.",
    "The sky was clear, and the hedges were full of small birds.",
    "Most of the other passengers were asleep, and the only sound was the rattle of the wheels.",
    "A man across the aisle was reading a newspaper and humming quietly to himself.",
    "The journey passed a river, two farms and a windmill that no longer turned.",
)
ENDINGS = (
    "It had been a long day, and {p} fell asleep before the lamps were lit.",
    "That evening {p} wrote everything down, so as not to forget any of it.",
    "Back home, {p} put the kettle on and thought about the day for a long time.",
    "{P} was tired but pleased, and promised to make the trip again before winter.",
)
TOWN_DETAILS = (
    "{dest} was larger than {home}, with cobbled streets and a clock that struck every quarter hour.",
    "The streets of {dest} were busy with carts, bicycles and children on their way to school.",
    "A smell of fresh bread drifted from the bakeries, and gulls circled above the chimneys.",
    "Flags hung from the windows along the high street, left over from a festival the week before.",
    "{hero} had not been to {dest} since childhood, and much of it looked smaller than {p} remembered.",
    "Near the bridge, a painter had set up an easel and was sketching the river.",
)
TALK = (
    "They spoke about the weather, about old school friends, and about the price of coal.",
    "{friend} told a long story about a goat that had wandered into the schoolhouse.",
    "{hero} described the journey, and {friend} laughed at {his} stories about the slow {vehicle}.",
    "Neither of them noticed how quickly the time went by.",
    "{friend} asked after everyone in {home} and wanted to hear all the news.",
)
REASONS = ("to visit the autumn fair", "to see an old friend", "to run a few errands",
           "to buy presents for a birthday", "to spend the day away from home")


@dataclass(frozen=True)
class SyntheticStory:
    """One generated story, its facts, and the questions about it (before sides are ordered)."""

    index: int
    seed: int
    title: str
    text: str
    facts: dict[str, Any]
    items: list[tuple[str, str, str, str]]  # (kind, question, correct, distractor)

    @property
    def story_id(self) -> str:
        return stable_id(SOURCE, self.seed, self.index)

    @property
    def split(self) -> str:
        return split_of_index(self.index)

    @property
    def num_words(self) -> int:
        return len(self.text.split())


def split_of_index(index: int) -> str:
    """80/10/10 by story index; taking indices in order fills every split early."""
    r = index % 10
    return "train" if r < 8 else ("val" if r == 8 else "test")


def _time(rng: random.Random) -> str:
    return f"{rng.randint(6, 11)}:{rng.choice(range(0, 60, 5)):02d}"


def _facts(rng: random.Random) -> dict[str, Any]:
    """Draw every fact of a story; each has a distinct twin of the same kind."""
    pools = [(name, "she", "her", "her") for name in WOMEN] + [(name, "he", "him", "his") for name in MEN]
    hero, friend, neighbour = rng.sample(pools, 3)
    home, dest, town3 = rng.sample(TOWNS, 3)
    obj1, obj2 = rng.sample(OBJECTS, 2)
    n1, n2 = rng.sample(NUMBERS, 2)
    t1 = _time(rng)
    t2 = _time(rng)
    while t2 == t1:
        t2 = _time(rng)
    vehicle, vehicle2 = rng.sample(VEHICLES, 2)
    return {
        "hero": hero[0], "p": hero[1], "P": hero[1].capitalize(), "him": hero[2], "his": hero[3],
        "friend": friend[0], "FP": friend[1].capitalize(), "neighbour": neighbour[0], "np": neighbour[1],
        "home": home, "dest": dest, "town3": town3, "obj1": obj1, "obj2": obj2,
        "goods": rng.choice(GOODS), "n1": n1, "n2": n2, "t1": t1, "t2": t2,
        "vehicle": vehicle, "vehicle2": vehicle2, "place": rng.choice(PLACES),
        "errands": rng.sample(ERRANDS, 3), "day": rng.choice(WEEKDAYS), "reason": rng.choice(REASONS),
    }


def _paragraphs(rng: random.Random, f: dict[str, Any]) -> list[str]:
    e1, e2, e3 = f["errands"]
    pick: Callable[..., str] = lambda *options: rng.choice(options).format(**f, e1=e1, e2=e2, e3=e3)
    intro = pick(
        "{hero} lived in {home}, a quiet town where little ever happened. One {day}, {p} decided to "
        "go to {dest} {reason}.",
        "On a cold {day} morning, {hero} set out from {home}. {P} had been planning a trip to {dest} "
        "for weeks, mostly {reason}.",
        "Nobody in {home} was surprised when {hero} announced a trip to {dest}. {P} wanted {reason}, "
        "and {day} seemed as good a day as any.",
    )
    station = pick(
        "{hero} caught the {t1} {vehicle} from {home}. On the platform {p} saw {neighbour}, a "
        "neighbour, who was carrying {obj2} and waiting for the {t2} {vehicle2} to {town3}.",
        "At the station {hero} met {neighbour}, who lived two doors away. {neighbour} was holding "
        "{obj2} and said {np} was taking the {t2} {vehicle2} to {town3}. {hero}'s own {vehicle} left "
        "{home} at {t1}.",
        "The {vehicle} left {home} at {t1} exactly. Just before it did, {hero} waved to "
        "{neighbour}, who stood nearby with {obj2}, waiting for the {t2} {vehicle2} to {town3}.",
    )
    journey = " ".join(rng.sample(SCENERY, rng.randint(1, 3))) + pick(
        " At last the {vehicle} reached {dest}.", " Before long {hero} arrived in {dest}.",
        " Soon the roofs of {dest} came into view.")
    errands = pick(
        "In {dest}, {hero} first {e1}. After that, {p} {e2}.",
        "Once in {dest}, {hero} went straight to work: first {p} {e1}, and then {p} {e2}.",
        "{hero} began the day in {dest} simply: {p} {e1}, and afterwards {p} {e2}.",
    )
    meeting = pick(
        "At {place}, {hero} met {friend}. They talked for an hour, and before they parted {friend} "
        "gave {him} {obj1}. Together they went to a stall, where {hero} bought {n1} {goods} and "
        "{friend} bought {n2}.",
        "{friend} was waiting at {place}, just as promised. {FP} had a present for {hero}: {obj1}. "
        "Later the two of them went shopping; {hero} bought {n1} {goods}, while {friend} bought {n2}.",
        "Around midday {hero} found {friend} at {place}. The two friends shared a pot of tea, and "
        "{friend} handed {hero} {obj1} as a gift. At the market {hero} bought {n1} {goods}, and "
        "{friend} bought {n2}.",
    )
    meeting = meeting[0].upper() + meeting[1:]
    details = " ".join(rng.sample(TOWN_DETAILS, rng.randint(1, 3))).format(**f)
    talk = " ".join(rng.sample(TALK, rng.randint(0, 3))).format(**f)
    last = pick(
        "Last of all, before leaving {dest}, {hero} {e3}.",
        "Before going home, {hero} {e3}; it was the last thing {p} did in {dest}.",
        "There was just enough time left, so {hero} {e3} before the trip home.",
    )
    ending = pick(*ENDINGS)
    middle = [details + " " + errands, meeting + (" " + talk if talk else "")]
    return [intro, station, journey, *middle, last + " " + ending]


def _questions(f: dict[str, Any], rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Every question kind as (kind, question, correct, distractor); the caller samples some."""
    e1, e2, e3 = f["errands"]
    return [
        ("meet", f"Whom did {f['hero']} meet at {f['place']}?", f["friend"], f["neighbour"]),
        ("giver", f"Who gave {f['hero']} {f['obj1']}?", f["friend"], f["neighbour"]),
        ("gift", f"What did {f['friend']} give {f['hero']}?", f["obj1"], f["obj2"]),
        ("carry", f"What was {f['neighbour']} carrying at the station?", f["obj2"], f["obj1"]),
        ("dest", f"Which town did {f['hero']} travel to?", f["dest"], f["home"]),
        ("away", f"Where was {f['neighbour']} going?", f["town3"], f["dest"]),
        ("depart", f"At what time did {f['hero']}'s {f['vehicle']} leave {f['home']}?", f["t1"], f["t2"]),
        ("other_time", f"At what time was {f['neighbour']}'s {f['vehicle2']} due to leave?", f["t2"], f["t1"]),
        ("count", f"How many {f['goods']} did {f['hero']} buy?", f["n1"], f["n2"]),
        ("friend_count", f"How many {f['goods']} did {f['friend']} buy?", f["n2"], f["n1"]),
        ("first", f"What did {f['hero']} do first in {f['dest']}?", e1, rng.choice((e2, e3))),
        ("last", f"What did {f['hero']} do last before leaving {f['dest']}?", e3, rng.choice((e1, e2))),
    ]


NUM_KINDS = 12


def generate_story(index: int, seed: int = 0, questions_per_story: int = 4) -> SyntheticStory:
    """Story ``index`` of ``seed``: the same text and questions whatever else is generated."""
    if not 1 <= questions_per_story <= NUM_KINDS:
        raise ValueError(f"questions_per_story must be in 1..{NUM_KINDS}, got {questions_per_story}")
    rng = random.Random(int(stable_id(SOURCE, "story", seed, index, length=16), 16))
    facts = _facts(rng)
    paragraphs = _paragraphs(rng, facts)
    title = rng.choice(("A Day Out for {hero}", "{hero} and the {day} {vehicle}", "{hero}'s Errands",
                        "The Trip from {home}")).format(**facts)
    items = rng.sample(_questions(facts, rng), questions_per_story)
    return SyntheticStory(index, seed, title, "\n\n".join(paragraphs), facts, items)


def story_questions(story: SyntheticStory, seed: int = 0) -> list[Question]:
    """The story's questions with the correct side placed at random (balanced over questions)."""
    rng = random.Random(int(stable_id(SOURCE, "order", seed, story.index, length=16), 16))
    questions = []
    for kind, text, correct, distractor in story.items:
        correct_index = rng.randrange(2)
        positions = (correct, distractor) if correct_index == 0 else (distractor, correct)
        questions.append(Question(
            story=story.text, story_title=story.title, question=text, positions=positions,
            correct_index=correct_index, question_id=stable_id(SOURCE, seed, story.index, kind),
            story_id=story.story_id, split=story.split, source=SOURCE,
            meta={"kind": kind, "story_index": story.index, "seed": seed},
        ))
    return questions


def generate(num_stories: int, seed: int = 0, questions_per_story: int = 4,
             split: str | None = None) -> list[Question]:
    """``num_stories`` stories' questions; with ``split``, that many stories all of that split.

    Without ``split`` the stories are indices ``0..num_stories-1`` (mixed splits); with it, the
    first ``num_stories`` indices that belong to the split, so ``generate(5, split="test")`` gives
    five test stories that no ``split="train"`` call can ever return.
    """
    if num_stories < 0:
        raise ValueError(f"num_stories must be >= 0, got {num_stories}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    questions: list[Question] = []
    index = taken = 0
    while taken < num_stories:
        if split is None or split_of_index(index) == split:
            questions.extend(story_questions(generate_story(index, seed, questions_per_story), seed))
            taken += 1
        index += 1
    return questions
