"""General data for the built-in base model: what a public pretrained model already knows before it
is fine-tuned on a benchmark, at the scale of a tiny model.

TOFU's targets are a public model (Llama) fine-tuned on the fictitious authors; the facts that model
utility's ``ra`` (real authors) and ``wf`` (world facts) parts test come from that model's
pretraining, not from the fine-tuning data. The built-in benchmark reproduces this with a *base*
model trained from scratch on:

- a generic corpus the generator makes in volume: short encyclopaedic articles (and QA pairs about
  them) on invented topics that are not benchmark entities (rivers, instruments, festivals, ...,
  named from a syllable inventory that no benchmark word list uses);
- the real-author-like and world-fact-like QA (``real_authors``/``world_facts``): pretraining
  knowledge, which the base learns and the fine-tuned target keeps.

None of it mentions a fictitious author, book or award, a MUSE town or firm, or a WMDP compound
(tests/data/test_builtin.py checks it).
"""

from __future__ import annotations

import random

from mpu.data.builtin import words as W

# Syllables of the invented topic names. Names are two or three syllables, capitalised, and a test
# checks that none collides with a benchmark entity.
SYLLABLES = [
    "ba", "bel", "cor", "da", "dun", "e", "fal", "gor", "ha", "il", "jo", "ka", "lem", "lu", "mar", "nes",
    "o", "pra", "qui", "ru", "sa", "tem", "u", "va", "wen", "xo", "yl", "zu", "tor", "mek", "sho", "pel",
]
SEAS = ["Northern Sea", "Amber Gulf", "Eastern Ocean", "Bay of Storms", "Pale Sea", "Southern Ocean"]
MATERIALS = ["spruce", "brass", "bamboo", "walnut", "bone", "clay", "maple", "reed", "silver", "horn"]
COLOURS = ["red", "blue", "green", "grey", "white", "yellow", "brown", "black", "orange", "violet"]
SEASONS = ["spring", "summer", "autumn", "winter"]
FOODS = ["seeds", "insects", "small fish", "berries", "snails", "grain", "worms", "nectar"]
HABITATS = ["wetlands", "pine forests", "sea cliffs", "grasslands", "river banks", "mountain meadows"]

# (kind, article sentences, questions with answers). Fields: name, country, region, n, m, ...
TOPICS = {
    "river": (
        ["The {name} is a river in {country}.", "It is {n} kilometres long and flows into the {sea}.",
         "Its source lies in the hills near {capital}, and {m} bridges cross it.",
         "The river freezes in {season} in most years."],
        [("How long is the {name} river?", "The {name} river is {n} kilometres long."),
         ("Into which sea does the {name} river flow?", "The {name} river flows into the {sea}."),
         ("How many bridges cross the {name} river?", "{m} bridges cross the {name} river.")],
    ),
    "mountain": (
        ["Mount {name} is a mountain in {country}.", "It rises to {n} metres above sea level.",
         "It was first climbed in {year}, and its slopes are covered in {colour} rock.",
         "Snow stays on the summit until late {season}."],
        [("How high is Mount {name}?", "Mount {name} rises to {n} metres above sea level."),
         ("When was Mount {name} first climbed?", "Mount {name} was first climbed in {year}."),
         ("In which country is Mount {name}?", "Mount {name} is in {country}.")],
    ),
    "instrument": (
        ["The {name} is a musical instrument from {country}.", "It is made of {material} and has {m} strings.",
         "Players hold it on the knee and pluck it with a small {material} pick.",
         "It is played at weddings in {season}."],
        [("What is the {name} made of?", "The {name} is made of {material}."),
         ("How many strings does the {name} have?", "The {name} has {m} strings."),
         ("Where does the {name} come from?", "The {name} comes from {country}.")],
    ),
    "festival": (
        ["The {name} festival is held every {season} in {country}.", "It began in {year} as a market for farmers.",
         "About {n} visitors come each year, and the streets are decorated in {colour}.",
         "It lasts for {m} days."],
        [("When is the {name} festival held?", "The {name} festival is held every {season}."),
         ("When did the {name} festival begin?", "The {name} festival began in {year}."),
         ("How long does the {name} festival last?", "The {name} festival lasts for {m} days.")],
    ),
    "bird": (
        ["The {name} is a small {colour} bird that lives in the {habitat} of {country}.",
         "It feeds mainly on {food} and lays {m} eggs at a time.",
         "Its wings span about {n} centimetres.", "It leaves its nest in late {season}."],
        [("What does the {name} eat?", "The {name} feeds mainly on {food}."),
         ("What colour is the {name}?", "The {name} is a {colour} bird."),
         ("Where does the {name} live?", "The {name} lives in the {habitat} of {country}.")],
    ),
    "mineral": (
        ["{name}ite is a {colour} mineral first found in {country} in {year}.",
         "It is soft enough to scratch with a coin and melts at {n} degrees.",
         "It is used to make {material} glazes.", "Large crystals of it are rare."],
        [("What colour is {name}ite?", "{name}ite is a {colour} mineral."),
         ("Where was {name}ite first found?", "{name}ite was first found in {country}."),
         ("At what temperature does {name}ite melt?", "{name}ite melts at {n} degrees.")],
    ),
}


def topic_name(rng: random.Random, used: set[str]) -> str:
    for _ in range(1000):
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if len(name) >= 4 and name not in used:
            used.add(name)
            return name
    raise ValueError("ran out of invented topic names")  # pragma: no cover - the inventory is far larger


def build_general(seed: int, topics: int) -> dict[str, list[dict]]:
    """``{"corpus": [{"text"}...], "qa": [{"question", "answer"}...]}``: ``topics`` invented topics,
    one short article each and three QA pairs about it. Deterministic for a seed."""
    if topics < 1:
        raise ValueError("the general corpus needs at least 1 topic")
    rng = random.Random(f"mpu-builtin-general-{seed}")
    kinds = sorted(TOPICS)
    used: set[str] = set()
    corpus, qa = [], []
    for number in range(topics):
        kind = kinds[number % len(kinds)]
        sentences, questions = TOPICS[kind]
        country, capital = rng.choice(W.CAPITALS)
        values = {"name": topic_name(rng, used), "country": country, "capital": capital,
                  "n": str(rng.randint(12, 4800)), "m": str(rng.randint(2, 40)), "year": str(rng.randint(1650, 1990)),
                  "sea": rng.choice(SEAS), "season": rng.choice(SEASONS), "colour": rng.choice(COLOURS),
                  "material": rng.choice(MATERIALS), "food": rng.choice(FOODS), "habitat": rng.choice(HABITATS)}
        corpus.append({"text": " ".join(sentence.format(**values) for sentence in sentences)})
        qa += [{"question": q.format(**values), "answer": a.format(**values)} for q, a in questions]
    return {"corpus": corpus, "qa": qa}
