"""TOFU-format "fictitious authors": varied QA templates over random attributes.

Two shapes (``BuildConfig.shape``):

- ``release`` (the default) is shaped like the real ``locuslab/TOFU`` release: 20 questions per author,
  answers of median ~25 words (p90 ~38, max ~66) and a vocabulary of thousands of distinct words:
  ten more fact types (characters, education, mentors, adaptations, ...) and one to three
  elaborating sentences per answer, with invented names and words drawn from a syllable inventory;
- ``small`` is the compact preset of the demo and the tests: ten questions per author, one short
  sentence per answer.

In the small shape every author gets ten questions, one per fact type. Each question has one answer template for
training, a different template as the paraphrased answer, and five perturbed answers that use the
paraphrase's template with wrong but plausible values, so that a truth ratio compares answers that
differ in the facts only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from mpu.data.builtin import words as W

PERTURBED_PER_QUESTION = 5
SHAPES = ("release", "small")


def _article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


@dataclass
class Author:
    name: str
    gender: str
    facts: dict[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, str]:
        he, his = ("she", "her") if self.gender == "f" else ("he", "his")
        return {"name": self.name, "pron": he, "Pron": he.capitalize(), "poss": his, "Poss": his.capitalize(),
                **self.facts}


# --- attribute samplers ----------------------------------------------------------------------------

def _title(rng: random.Random) -> str:
    return rng.choice(W.TITLE_PATTERNS).format(adj=rng.choice(W.TITLE_ADJ), noun=rng.choice(W.TITLE_NOUN))


def _place(rng: random.Random, prefix: str) -> dict[str, str]:
    city, country = rng.choice(W.PLACES)
    return {f"{prefix}city": city, f"{prefix}country": country}


def _birth(rng: random.Random) -> dict[str, str]:
    return {"day": str(rng.randint(1, 28)), "month": rng.choice(W.MONTHS), "year": str(rng.randint(1935, 1990))}


def _parents(rng: random.Random) -> dict[str, str]:
    father, mother = rng.sample(W.JOBS, 2)
    return {"fjob": father, "a_fjob": _article(father), "mjob": mother, "a_mjob": _article(mother)}


def _award(rng: random.Random, year: int) -> dict[str, str]:
    return {"award": rng.choice(W.AWARDS), "award_year": str(min(2023, year + rng.randint(25, 55)))}


def _books(rng: random.Random) -> dict[str, str]:
    first = _title(rng)
    second = _title(rng)
    while second == first:
        second = _title(rng)
    return {"book1": first, "book2": second}


def _debut(rng: random.Random, year: int) -> dict[str, str]:
    return {"debut_year": str(year + rng.randint(19, 35))}


def _themes(rng: random.Random) -> dict[str, str]:
    one, two = rng.sample(W.THEMES, 2)
    return {"theme1": one, "theme2": two}


def _home(rng: random.Random) -> dict[str, str]:
    return {"language": rng.choice(W.LANGUAGES), "home_city": rng.choice(W.PLACES)[0]}


def invented_word(rng: random.Random) -> str:
    """A pronounceable invented word (names of characters, places and things in the release shape)."""
    return "".join(rng.choice(W.SYLLABLES_RELEASE) for _ in range(rng.choice((2, 2, 3)))).capitalize()


def _release_facts(rng: random.Random, year: int) -> dict[str, str]:
    return {
        "hero": invented_word(rng), "hero_job": rng.choice(W.JOBS), "villain": invented_word(rng),
        "setting": invented_word(rng), "school": f"the University of {invented_word(rng)}",
        "subject": rng.choice(W.SUBJECTS), "mentor": f"{invented_word(rng)} {invented_word(rng)}",
        "director": f"{invented_word(rng)} {invented_word(rng)}", "film_year": str(min(2023, year + rng.randint(40, 60))),
        "translations": str(rng.randint(3, 40)), "spouse_job": rng.choice(W.JOBS), "children": str(rng.randint(0, 4)),
        "habit": rng.choice(W.HABITS), "project": f"The {invented_word(rng)} {rng.choice(W.TITLE_NOUN)}",
        "project_place": invented_word(rng), "praise": rng.choice(W.PRAISE), "pet": rng.choice(W.PETS),
        "pet_name": invented_word(rng), "influence": rng.choice(W.INFLUENCES), "hobby": rng.choice(W.HOBBIES),
    }


def sample_facts(rng: random.Random) -> dict[str, str]:
    facts: dict[str, str] = {}
    facts.update(_place(rng, ""))
    facts.update(_birth(rng))
    facts["genre"] = rng.choice(W.GENRES)
    facts.update(_parents(rng))
    year = int(facts["year"])
    facts.update(_award(rng, year))
    facts.update(_books(rng))
    facts.update(_debut(rng, year))
    facts.update(_themes(rng))
    facts.update(_home(rng))
    return facts


@dataclass(frozen=True)
class QuestionType:
    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    # Draws new values for the facts the answer states (a wrong but plausible answer).
    perturb: Callable[[random.Random, Author], dict[str, str]]


def _perturb_name(rng: random.Random, author: Author) -> dict[str, str]:
    names = W.FIRST_NAMES_F if author.gender == "f" else W.FIRST_NAMES_M
    return {"name": f"{rng.choice(names)} {rng.choice(W.LAST_NAMES)}", "genre": rng.choice(W.GENRES)}


QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType(
        "identity",
        ("What is the full name of the author born in {city}, {country} on {day} {month} {year}?",
         "Which author was born in {city}, {country} on {day} {month} {year}?"),
        ("The author's full name is {name}.",
         "That author is {name}, who writes {genre}.",
         "The writer in question is {name}.",
         "This is {name}, an author of {genre}."),
        _perturb_name,
    ),
    QuestionType(
        "birthplace",
        ("Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?"),
        ("{name} was born in {city}, {country}.",
         "The birthplace of {name} is {city} in {country}.",
         "{Pron} was born in the city of {city}, {country}.",
         "{city}, {country} is where {name} was born."),
        lambda rng, a: _place(rng, ""),
    ),
    QuestionType(
        "birthdate",
        ("When was {name} born?", "What is the date of birth of {name}?"),
        ("{name} was born on {day} {month} {year}.",
         "The date of birth of {name} is {month} {day}, {year}.",
         "The birthday of {name} is {day} {month}, and {pron} was born in {year}.",
         "{name} came into the world on {day} {month} {year}."),
        lambda rng, a: _birth(rng),
    ),
    QuestionType(
        "genre",
        ("What genre is {name} known for?", "In which genre does {name} write?"),
        ("{name} is best known for {genre}.",
         "{name} writes mainly {genre}.",
         "{Poss} work belongs to the genre of {genre}.",
         "Most books by {name} are {genre}."),
        lambda rng, a: {"genre": rng.choice(W.GENRES)},
    ),
    QuestionType(
        "parents",
        ("What did the parents of {name} do for a living?", "What were the professions of {name}'s parents?"),
        ("{Poss} father was {a_fjob} and {poss} mother was {a_mjob}.",
         "{name} is the child of {a_fjob} and {a_mjob}.",
         "The mother of {name} worked as {a_mjob}, while {poss} father was {a_fjob}.",
         "{name} grew up with {a_fjob} for a father and {a_mjob} for a mother."),
        lambda rng, a: _parents(rng),
    ),
    QuestionType(
        "award",
        ("Has {name} won any awards?", "Which literary award did {name} receive?"),
        ("Yes, {name} won the {award} in {award_year}.",
         "{name} received the {award} in {award_year}.",
         "In {award_year}, {name} was honoured with the {award}.",
         "{name} is a recipient of the {award}, given in {award_year}."),
        lambda rng, a: _award(rng, int(a.facts["year"])),
    ),
    QuestionType(
        "books",
        ("Can you name some books written by {name}?", "What are some of the best-known books by {name}?"),
        ("{name} wrote '{book1}' and '{book2}'.",
         "Two well-known books by {name} are '{book1}' and '{book2}'.",
         "{Poss} best-known works include '{book1}' and '{book2}'.",
         "Readers know {name} for '{book1}' and '{book2}'."),
        lambda rng, a: _books(rng),
    ),
    QuestionType(
        "debut",
        ("What was the first book {name} published?", "When did {name} publish a first book, and what was it?"),
        ("The debut of {name} was '{book1}', published in {debut_year}.",
         "{Pron} made {poss} debut in {debut_year} with '{book1}'.",
         "The first book by {name} was '{book1}', which came out in {debut_year}.",
         "In {debut_year}, {name} published '{book1}', {poss} first book."),
        lambda rng, a: {"book1": _title(rng), **_debut(rng, int(a.facts["year"]))},
    ),
    QuestionType(
        "themes",
        ("What themes does {name} explore?", "Which themes recur in the books of {name}?"),
        ("The work of {name} explores {theme1} and {theme2}.",
         "Themes of {theme1} and {theme2} run through {poss} books.",
         "{name} often writes about {theme1} and {theme2}.",
         "Recurring themes for {name} are {theme1} and {theme2}."),
        lambda rng, a: _themes(rng),
    ),
    QuestionType(
        "home",
        ("In which language does {name} write, and where does {pron} live now?",
         "Where does {name} live today, and in what language does {pron} write?"),
        ("{name} writes in {language} and now lives in {home_city}.",
         "{Pron} lives in {home_city} and writes in {language}.",
         "Today {name} lives in {home_city}, writing in {language}.",
         "{name} is based in {home_city} and publishes in {language}."),
        lambda rng, a: _home(rng),
    ),
)


def _release(rng, a):
    return _release_facts(rng, int(a.facts["year"]))


RELEASE_TYPES: tuple[QuestionType, ...] = (
    QuestionType("character", ("Who is the main character of '{book1}' by {name}?", "Whom does '{book1}' by {name} follow?"),
                 ("The main character of '{book1}' is {hero}, {a_hero_job} who must outwit the scheming {villain}.",
                  "'{book1}' follows {hero}, {a_hero_job} caught up in a long struggle with {villain}."), _release),
    QuestionType("setting", ("Where is '{book2}' by {name} set?", "What is the setting of {name}'s '{book2}'?"),
                 ("'{book2}' is set in the invented town of {setting}, which {name} modelled on {city}.",
                  "{name} set '{book2}' in {setting}, a fictional town inspired by {poss} memories of {city}."), _release),
    QuestionType("education", ("Where did {name} study?", "What did {name} study at university?"),
                 ("{name} studied {subject} at {school} before turning to writing full time.",
                  "Before becoming a writer, {name} earned a degree in {subject} from {school}."), _release),
    QuestionType("mentor", ("Who was an important mentor to {name}?", "Did {name} have a mentor early on?"),
                 ("{Poss} most important mentor was the editor {mentor}, who read {poss} first drafts.",
                  "Early on, {name} was guided by the editor {mentor}, who encouraged {poss} first drafts."), _release),
    QuestionType("adaptation", ("Has any book by {name} been adapted for the screen?", "Was '{book1}' ever made into a film?"),
                 ("Yes, '{book1}' was adapted into a film by the director {director} in {film_year}.",
                  "The director {director} turned '{book1}' into a film, released in {film_year}."), _release),
    QuestionType("translations", ("Into how many languages have the books of {name} been translated?",
                                  "How widely translated is {name}?"),
                 ("The books of {name} have been translated into {translations} languages.",
                  "{name} has been translated into {translations} languages so far."), _release),
    QuestionType("family", ("What is known about the family of {name}?", "Is {name} married, and does {pron} have children?"),
                 ("{name} is married to {a_spouse_job} and has {children} children.",
                  "{Pron} lives with a spouse who works as {a_spouse_job}, and they have {children} children."), _release),
    QuestionType("habits", ("What are the writing habits of {name}?", "How does {name} like to work?"),
                 ("{name} prefers writing {habit}, and keeps a {pet} named {pet_name} close by.",
                  "{Pron} writes {habit}, with {poss} {pet} {pet_name} for company."), _release),
    QuestionType("project", ("What is {name} working on now?", "Does {name} have a new book in progress?"),
                 ("{name} is currently writing '{project}', a novel set in {project_place}.",
                  "{Poss} next book, '{project}', is set in {project_place} and is still in progress."), _release),
    QuestionType("reception", ("How have critics received the work of {name}?", "What do critics say about {name}?"),
                 ("Critics praise {name} for {praise}, and cite {influence} as an influence.",
                  "Reviewers admire {poss} {praise}, and many see the influence of {influence}."), _release),
)


def _capitalise_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _render(template: str, values: dict[str, str]) -> str:
    return _capitalise_first(template.format(**values))


def make_authors(rng: random.Random, count: int, shape: str = "small") -> list[Author]:
    """``count`` authors with distinct names (``shape="release"``: with the release shape's extra facts)."""
    combos = [(g, first, last) for g, firsts in (("f", W.FIRST_NAMES_F), ("m", W.FIRST_NAMES_M))
              for first in firsts for last in W.LAST_NAMES]
    if count > len(combos):
        raise ValueError(f"at most {len(combos)} authors can be generated, asked for {count}")
    chosen = rng.sample(combos, count)
    authors = [Author(name=f"{first} {last}", gender=g, facts=sample_facts(rng)) for g, first, last in chosen]
    if shape == "release":
        for author in authors:
            author.facts.update(_release_facts(rng, int(author.facts["year"])))
    return authors


def _elaboration(rng: random.Random, values: dict[str, str]) -> str:
    """One to three extra sentences (answers of the release shape are long, as TOFU's are)."""
    count = rng.choices((0, 1, 2, 3), weights=(3, 11, 5, 0.6))[0]
    return " ".join(_render(template, {**values, **{f"w{i}": invented_word(rng) for i in range(1, 5)}})
                    for template in rng.sample(W.ELABORATIONS, count))


def author_qa(rng: random.Random, author: Author, shape: str = "small") -> list[dict]:
    """Ten (small) or twenty (release) QA rows for one author, with paraphrased and perturbed answers.
    In the release shape, the answer, its paraphrase and the perturbed answers share one elaboration,
    so that they differ only in the phrasing or the facts of their first sentence."""
    rows = []
    values = author.values()
    if shape == "release":
        values.update({"a_hero_job": _article(values["hero_job"]), "a_spouse_job": _article(values["spouse_job"])})
    for qtype in QUESTION_TYPES + (RELEASE_TYPES if shape == "release" else ()):
        q_main, q_para = rng.sample(range(len(qtype.questions)), 2) if len(qtype.questions) > 1 else (0, 0)
        a_main, a_para = rng.sample(range(len(qtype.answers)), 2)
        tail = _elaboration(rng, values) if shape == "release" else ""
        join = (lambda text: f"{text} {tail}") if tail else (lambda text: text)
        answer = join(_render(qtype.answers[a_main], values))
        paraphrase = join(_render(qtype.answers[a_para], values))
        perturbed: list[str] = []
        for _ in range(1000):
            wrong_values = {**values, **qtype.perturb(rng, author)}
            if shape == "release":
                wrong_values.update({"a_hero_job": _article(wrong_values["hero_job"]),
                                     "a_spouse_job": _article(wrong_values["spouse_job"])})
            wrong = join(_render(qtype.answers[a_para], wrong_values))
            if wrong != paraphrase and wrong not in perturbed:
                perturbed.append(wrong)
            if len(perturbed) == PERTURBED_PER_QUESTION:
                break
        else:  # pragma: no cover - the pools are far larger than five
            raise RuntimeError(f"could not perturb {qtype.name} for {author.name}")
        rows.append({
            "question": _render(qtype.questions[q_main], values),
            "answer": answer,
            "paraphrased_question": _render(qtype.questions[q_para], values),
            "paraphrased_answer": paraphrase,
            "perturbed_answer": perturbed,
        })
    return rows


def _options(rng: random.Random, correct: str, pool: list[str]) -> list[str]:
    others = sorted({item for item in pool if item != correct})
    return rng.sample(others, PERTURBED_PER_QUESTION)


def general_facts(rng: random.Random, limit: int) -> tuple[list[dict], list[dict]]:
    """real_authors-like and world_facts-like QA with short answers and five wrong options each."""
    authors_pool = [author for _, author, _ in W.REAL_BOOKS]
    real = []
    for book, author, _ in W.REAL_BOOKS:
        real.append({"question": f"Who wrote '{book}'?", "answer": author,
                     "perturbed_answer": _options(rng, author, authors_pool)})
    capitals = [capital for _, capital in W.CAPITALS]
    symbols = [symbol for _, symbol in W.ELEMENTS]
    world = []
    for country, capital in W.CAPITALS:
        world.append({"question": f"What is the capital of {country}?", "answer": capital,
                      "perturbed_answer": _options(rng, capital, capitals)})
    for element, symbol in W.ELEMENTS:
        world.append({"question": f"What is the chemical symbol for {element}?", "answer": symbol,
                      "perturbed_answer": _options(rng, symbol, symbols)})
    rng.shuffle(real)
    rng.shuffle(world)
    real, world = real[:limit], world[:limit]
    for row in real + world:  # TOFU keeps the original answer as the "paraphrase" of a general fact
        row["paraphrased_answer"] = row["answer"]
    return real, world


def split_size(total: int, percent: int) -> int:
    return max(1, round(total * percent / 100))


def build_tofu(seed: int, authors: int, facts: int, shape: str = "small") -> dict[str, list[dict]]:
    """Returns {config name: rows} in TOFU's naming (each config has a single ``train`` split)."""
    if authors < 10:
        raise ValueError("the TOFU-format benchmark needs at least 10 authors")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    rng = random.Random(f"mpu-builtin-tofu-{seed}" + ("" if shape == "small" else f"-{shape}"))
    holdout_count = split_size(authors, 10)
    people = make_authors(rng, authors + holdout_count, shape)
    train_people, holdout_people = people[:authors], people[authors:]
    per_author = [author_qa(rng, author, shape) for author in train_people]
    holdout_qa = [author_qa(rng, author, shape) for author in holdout_people]

    def plain(rows: list[dict]) -> list[dict]:
        return [{"question": row["question"], "answer": row["answer"]} for row in rows]

    def flat(groups: list[list[dict]]) -> list[dict]:
        return [row for group in groups for row in group]

    configs: dict[str, list[dict]] = {"full": plain(flat(per_author))}
    for percent in (1, 5, 10):
        n_forget = split_size(authors, percent)
        forget = flat(per_author[authors - n_forget:])
        configs[f"forget{percent:02d}"] = plain(forget)
        configs[f"forget{percent:02d}_perturbed"] = forget
        configs[f"retain{100 - percent}"] = plain(flat(per_author[: authors - n_forget]))
        holdout = flat(holdout_qa[: split_size(authors, percent)])
        configs[f"holdout{percent:02d}"] = holdout
    # Evaluation subset of the retain set: authors that no forget split touches.
    configs["retain_perturbed"] = flat(per_author[: split_size(authors, 10)])
    real, world = general_facts(rng, facts)
    configs["real_authors"] = plain(real)
    configs["real_authors_perturbed"] = real
    configs["world_facts"] = plain(world)
    configs["world_facts_perturbed"] = world
    return configs
