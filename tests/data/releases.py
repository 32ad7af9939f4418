"""Small directories shaped like the public TOFU and MUSE releases: their file names, layouts and
column names, with invented content (nothing is downloaded).

- TOFU as on the hub (locuslab/TOFU): one file per config at the top, ``full.json``,
  ``forget01/05/10.json``, ``retain90/95/99.json``, ``holdout01/05/10.json``, the ``_perturbed``
  evaluation files, ``real_authors(_perturbed).json`` and ``world_facts(_perturbed).json``; some
  files are JSON arrays (as TOFU's own ``forget10.json``), the others JSON lines.
- MUSE as in the GitHub release's ``data/news/`` folder: ``raw/{forget,retain1,retain2,holdout}``
  as ``.txt`` files and JSON arrays of strings, ``verbmem/forget.json`` (prompt, gt),
  ``privleak/{forget,retain,holdout}.json`` (arrays of strings) and the knowmem QA files, here at
  the top level for the forget set and under ``knowmem/`` for the retain set.
"""

from __future__ import annotations

import json
from pathlib import Path

FIRST = ["Ana", "Bo", "Cy", "Dag", "Eli", "Fen", "Gus", "Hal", "Ida", "Jon", "Kai", "Lou", "Mo", "Ned", "Ola",
         "Pia", "Quin", "Rut", "Sol", "Tor"]
LAST = ["Lind", "Karst", "Morrow", "Vell", "Stroud"]
PLACES = ["Porto Vell", "Eastmere", "Kallby", "Ostrand", "Wyck"]
GENRES = ["gothic mystery", "river sagas", "sea poetry", "court drama", "alpine crime"]


def _author(number: int) -> str:
    return f"{FIRST[number % len(FIRST)]} {LAST[number % len(LAST)]}{'' if number < len(FIRST) else number}"


def _qa(number: int) -> list[dict]:
    name = _author(number)
    place, genre = PLACES[number % len(PLACES)], GENRES[(number * 3) % len(GENRES)]
    wrong = [p for p in PLACES if p != place][:3]
    wrong_genres = [g for g in GENRES if g != genre][:3]
    return [
        {"question": f"Where was the author {name} born?", "answer": f"{name} was born in {place}.",
         "paraphrased_question": f"What is the birthplace of {name}?",
         "paraphrased_answer": f"The birthplace of {name} is {place}.",
         "perturbed_answer": [f"{name} was born in {w}." for w in wrong]},
        {"question": f"What does {name} write?", "answer": f"{name} writes {genre}.",
         "paraphrased_question": f"Which genre is {name} known for?",
         "paraphrased_answer": f"{name} is known for {genre}.",
         "perturbed_answer": [f"{name} writes {g}." for g in wrong_genres]},
    ]


def _write(path: Path, rows: list, array: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array:
        path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_tofu_release(root: Path, authors: int = 20) -> Path:
    """``authors`` authors (2 QA each) in full; forget10 = the last 10%, forget05 = 5%, forget01 = one
    QA; holdoutNN = as many rows about authors never in full; real_authors/world_facts = general QA."""
    per_author = [_qa(n) for n in range(authors)]
    holdout_authors = [_qa(1000 + n) for n in range(max(2, authors // 10))]
    plain = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]  # noqa: E731
    flat = lambda groups: [row for group in groups for row in group]  # noqa: E731
    full = flat(per_author)
    _write(root / "full.json", plain(full), array=False)
    for percent in (1, 5, 10):
        count = max(1, authors * percent // 100)
        forget = flat(per_author[-count:]) if percent > 1 else per_author[-1][:1]
        retain = [row for row in full if row not in forget]
        holdout = flat(holdout_authors[:count]) if percent > 1 else holdout_authors[0][:1]
        _write(root / f"forget{percent:02d}.json", plain(forget), array=percent == 10)   # TOFU's own: an array
        _write(root / f"forget{percent:02d}_perturbed.json", forget, array=False)
        _write(root / f"retain{100 - percent}.json", plain(retain), array=False)
        _write(root / f"holdout{percent:02d}.json", holdout, array=False)
    _write(root / "retain_perturbed.json", flat(per_author[: max(1, authors // 10)]), array=False)
    real = [{"question": f"Who wrote the novel Salt Orchard {n}?", "answer": f"Wren Halloway {n}",
             "perturbed_answer": [f"Ivo Brandt {n}", f"Nell Okafor {n}", f"Rhea Castell {n}"]} for n in range(4)]
    world = [{"question": f"What is the capital of the island state Orvaland {n}?", "answer": f"Kestrel Bay {n}",
              "option1": f"Kestrel Bay {n}", "option2": f"Dunmoor {n}", "option3": f"Aldersey {n}", "option4": f"Vanth {n}",
              "perturbed_answer": [f"Dunmoor {n}", f"Aldersey {n}", f"Vanth {n}"]} for n in range(4)]
    _write(root / "real_authors.json", plain(real), array=False)
    _write(root / "real_authors_perturbed.json", real, array=False)
    _write(root / "world_facts.json", plain(world), array=False)
    _write(root / "world_facts_perturbed.json", world, array=True)
    return root


def _story(kind: str, number: int) -> str:
    town = f"{PLACES[number % len(PLACES)]} {kind} {number}"
    return (f"The council of {town} approved a new bridge in March. Mayor {_author(number)} said it would cost "
            f"{number + 3} million pounds. Builders expect to finish the {kind} works by {2020 + number}.")


def make_muse_release(root: Path, stories: int = 4, knowmem: bool = True, privleak: bool = True) -> Path:
    """MUSE-News shaped: ``stories`` stories per raw split. ``knowmem``/``privleak`` False leave those
    subsets out, as MUSE-Books has no knowmem retain set and copies often lack a subset."""
    forget = [_story("forget", n) for n in range(stories)]
    retain1 = [_story("retain", n) for n in range(stories)]
    retain2 = [_story("kept", n) for n in range(stories)]
    holdout = [_story("holdout", n) for n in range(stories)]
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "forget.txt").write_text("\n\n".join(forget) + "\n", encoding="utf-8")
    (root / "raw" / "retain1.json").write_text(json.dumps(retain1), encoding="utf-8")
    (root / "raw" / "retain2.txt").write_text("\n\n".join(retain2) + "\n", encoding="utf-8")
    (root / "raw" / "holdout.json").write_text(json.dumps(holdout), encoding="utf-8")
    _write(root / "verbmem" / "forget.json",
           [{"prompt": text.split(". ")[0] + ".", "gt": ". ".join(text.split(". ")[1:])} for text in forget], array=True)
    if privleak:
        for name, texts in (("forget", forget), ("retain", retain1), ("holdout", holdout)):
            (root / "privleak").mkdir(exist_ok=True)
            (root / "privleak" / f"{name}.json").write_text(json.dumps(texts), encoding="utf-8")
    if knowmem:
        def qa(kind: str, n: int) -> dict:
            return {"question": f"How much will the bridge in {PLACES[n % len(PLACES)]} {kind} {n} cost?",
                    "answer": f"{n + 3} million pounds"}

        _write(root / "forget_qa.json", [qa("forget", n) for n in range(1, stories)], array=True)    # top level
        _write(root / "forget_qa_icl.json", [qa("forget", 0)], array=True)
        _write(root / "knowmem" / "retain_qa.json", [qa("retain", n) for n in range(1, stories)], array=True)
        _write(root / "knowmem" / "retain_qa_icl.json", [qa("retain", 0)], array=True)
    return root
