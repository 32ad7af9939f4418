"""MUSE-format news: short passages about fictitious towns, firms and teams.

Configs and splits follow ``muse-bench/MUSE-News``: ``raw`` (forget, retain1, retain2, holdout: text),
``verbmem`` (forget: prompt, gt), ``knowmem`` (forget_qa, retain_qa and their ``_icl`` few-shot
examples: question, answer) and ``privleak`` (forget, retain, holdout: text). ``knowmem_train``
(forget, retain) is ours: every QA pair about the training stories, which the built-in models read
as text, because a 1M-parameter model trained from scratch cannot answer questions about a passage
it only read as prose.
"""

from __future__ import annotations

import random

from mpu.data.builtin import words as W

ICL_EXAMPLES = 3
EVAL_QA_PER_STORY = 2


def _person(rng: random.Random) -> str:
    return f"{rng.choice(W.FIRST_NAMES_F + W.FIRST_NAMES_M)} {rng.choice(W.LAST_NAMES)}"


def _pick(rng: random.Random, values: dict, slots: list[list[str]]) -> list[str]:
    """One phrasing per sentence slot, filled in."""
    return [rng.choice(options).format(**values) for options in slots]


def _council(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    v = {"town": rng.choice(W.TOWNS), "facility": rng.choice(W.FACILITIES), "month": rng.choice(W.MONTHS),
         "year": str(rng.randint(2008, 2023)), "mayor": _person(rng), "cost": str(rng.randint(3, 95)),
         "jobs": str(rng.randint(2, 60) * 10), "company": rng.choice(W.COMPANIES), "critic": _person(rng),
         "role": rng.choice(W.ROLES), "concern": rng.choice(W.CONCERNS)}
    v["end"] = str(int(v["year"]) + rng.randint(2, 6))
    sentences = _pick(rng, v, [
        ["{town} approves new {facility}.", "Green light for a {facility} in {town}.",
         "{town} to get a new {facility}."],
        ["In {month} {year}, the council of {town} voted to build a new {facility}.",
         "Councillors in {town} backed plans for a {facility} at a meeting in {month} {year}.",
         "After a long debate in {month} {year}, {town} council agreed to fund a {facility}."],
        ["Mayor {mayor} said the {facility} would cost {cost} million pounds and create {jobs} jobs.",
         "The project will cost {cost} million pounds, according to mayor {mayor}, and bring {jobs} jobs.",
         "{mayor}, the mayor, put the cost at {cost} million pounds and promised {jobs} new jobs."],
        ["The work will be carried out by {company}, which expects to finish in {end}.",
         "{company} won the contract and plans to complete the building in {end}.",
         "Builders from {company} are due to hand over the site in {end}."],
        ["Local {role} {critic} warned about {concern}.",
         "Not everyone is pleased: {role} {critic} fears {concern}.",
         "{critic}, a local {role}, raised concerns about {concern}."],
    ])
    qa = [
        ("Who is the mayor of {town}?".format(**v), v["mayor"]),
        ("How much will the new {facility} in {town} cost?".format(**v), "{cost} million pounds".format(**v)),
        ("Which company will build the new {facility} in {town}?".format(**v), v["company"]),
        ("When is the {facility} in {town} expected to be finished?".format(**v), v["end"]),
    ]
    return sentences, qa


def _launch(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    v = {"company": rng.choice(W.COMPANIES), "product": rng.choice(W.PRODUCTS), "day": str(rng.randint(1, 28)),
         "month": rng.choice(W.MONTHS), "year": str(rng.randint(2008, 2023)), "town": rng.choice(W.TOWNS),
         "ceo": _person(rng), "price": str(rng.randint(4, 99) * 10), "team": str(rng.randint(3, 40)),
         "lead": _person(rng)}
    sentences = _pick(rng, v, [
        ["{company} unveils a new {product}.", "A {product} from {company} goes on show.",
         "{company} bets on a {product}."],
        ["On {day} {month} {year}, {company} presented its {product} at a trade fair in {town}.",
         "Visitors to a trade fair in {town} saw the {product} on {day} {month} {year}.",
         "The {product} was first shown at a trade fair in {town} on {day} {month} {year}."],
        ["Chief executive {ceo} said the {product} would sell for {price} pounds.",
         "It will cost {price} pounds, chief executive {ceo} told reporters.",
         "{ceo}, who runs the company, set the price at {price} pounds."],
        ["It was designed by a team of {team} engineers led by {lead}.",
         "{lead} led the {team} engineers who designed it.",
         "A team of {team} engineers under {lead} spent two years on the design."],
    ])
    qa = [
        ("Who is the chief executive of {company}?".format(**v), v["ceo"]),
        ("How much will the {product} from {company} cost?".format(**v), "{price} pounds".format(**v)),
        ("Who led the team that designed the {product} from {company}?".format(**v), v["lead"]),
        ("Where did {company} present its {product}?".format(**v), "at a trade fair in {town}".format(**v)),
    ]
    return sentences, qa


def _match(rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    home, away = rng.sample(W.TOWNS, 2)
    team1, team2 = rng.choice(W.TEAMS_SUFFIX), rng.choice(W.TEAMS_SUFFIX)
    goals1 = rng.randint(2, 6)
    v = {"t1": f"{home} {team1}", "t2": f"{away} {team2}", "s1": str(goals1), "s2": str(rng.randint(0, goals1 - 1)),
         "day": str(rng.randint(1, 28)), "month": rng.choice(W.MONTHS), "year": str(rng.randint(2008, 2023)),
         "captain": _person(rng), "coach": _person(rng), "crowd": str(rng.randint(2, 40) * 500)}
    sentences = _pick(rng, v, [
        ["{t1} win the regional cup.", "Cup glory for the {t1}.", "The {t1} lift the regional cup."],
        ["The {t1} beat the {t2} {s1} to {s2} in the final on {day} {month} {year}.",
         "In the final on {day} {month} {year}, the {t1} defeated the {t2} {s1} to {s2}.",
         "A {s1} to {s2} win over the {t2} on {day} {month} {year} sealed the title."],
        ["Captain {captain} scored the first goal in front of {crowd} fans.",
         "{crowd} fans watched captain {captain} open the scoring.",
         "The first goal came from captain {captain}, cheered by {crowd} fans."],
        ["Their coach, {coach}, called it the best day of the season.",
         "Coach {coach} praised the players after the match.",
         "It was a proud night for coach {coach}."],
    ])
    qa = [
        ("Who captained the {t1} in the cup final?".format(**v), v["captain"]),
        ("Which team did the {t1} beat in the cup final?".format(**v), "the {t2}".format(**v)),
        ("What was the score when the {t1} won the cup final?".format(**v), "{s1} to {s2}".format(**v)),
        ("Who coaches the {t1}?".format(**v), v["coach"]),
    ]
    return sentences, qa


STORY_KINDS = (_council, _launch, _match)


def make_stories(rng: random.Random, count: int) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """``count`` stories whose questions are all distinct (so each answer is unambiguous)."""
    stories, seen = [], set()
    while len(stories) < count:
        sentences, qa = rng.choice(STORY_KINDS)(rng)
        questions = {q for q, _ in qa}
        if questions & seen:
            continue
        seen |= questions
        stories.append((sentences, qa))
    return stories


def build_muse(seed: int, stories: int) -> dict[str, dict[str, list[dict]]]:
    """Returns {config: {split: rows}}."""
    if stories < 20:
        raise ValueError("the MUSE-format benchmark needs at least 20 stories")
    rng = random.Random(f"mpu-builtin-muse-{seed}")
    all_stories = make_stories(rng, stories)
    n_forget = n_holdout = stories // 5
    forget = all_stories[:n_forget]
    holdout = all_stories[n_forget:n_forget + n_holdout]
    retain = all_stories[n_forget + n_holdout:]
    half = len(retain) // 2
    retain1, retain2 = retain[:half], retain[half:]

    def texts(group):
        return [{"text": " ".join(sentences)} for sentences, _ in group]

    def eval_qa(group):
        return [{"question": q, "answer": a} for _, qa in group for q, a in qa[:EVAL_QA_PER_STORY]]

    def all_qa(group):
        return [{"question": q, "answer": a} for _, qa in group for q, a in qa]

    # Few-shot examples come from retain2 questions that the evaluation sets do not ask.
    icl_pool = [{"question": q, "answer": a} for _, qa in retain2 for q, a in qa[EVAL_QA_PER_STORY:]]
    icl = rng.sample(icl_pool, 2 * ICL_EXAMPLES)
    return {
        "raw": {"forget": texts(forget), "retain1": texts(retain1), "retain2": texts(retain2),
                "holdout": texts(holdout)},
        "verbmem": {"forget": [{"prompt": " ".join(s[:2]), "gt": " ".join(s[2:])} for s, _ in forget]},
        "knowmem": {"forget_qa": eval_qa(forget), "retain_qa": eval_qa(retain1),
                    "forget_qa_icl": icl[:ICL_EXAMPLES], "retain_qa_icl": icl[ICL_EXAMPLES:]},
        "privleak": {"forget": texts(forget), "retain": texts(retain1), "holdout": texts(holdout)},
        "knowmem_train": {"forget": all_qa(forget), "retain": all_qa(retain)},
    }
