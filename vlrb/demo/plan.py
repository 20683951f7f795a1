"""The plan of a demo dataset: its samples (TSV rows, latents, gold answers), one planner per family.

A planner `(dataset key, n, random.Random) -> DatasetPlan` draws the samples of one dataset; the demo's
table of families (`vlrb.demo.families.DEMO_FAMILIES`) names the planner of each correctness family.
The latent correctness draws are added by `vlrb.demo.generate.plan_dataset`.
"""
from __future__ import annotations

import random
from typing import Any

from vlrb.demo.samples import DatasetPlan, Sample
from vlrb.demo.vocab import (ANSWER_WORDS, CLAUSES, MATHVERSE_COT, MATHVERSE_DIRECT, MATHVERSE_VERSION_OFFSET,
                             MATHVERSE_VERSIONS, MATHVISION_SUBJECTS, MATHVISTA_SKILLS, MATHVISTA_TASKS,
                             MCQ_CATEGORIES, OCR_CATEGORIES, STEMS, TOPICS, pseudo_word)
from vlrb.demo.world import FULL_SCALE_COUNTS, HANDWRITTEN_MATH, KIND_MIX, KINDS


def _question(kind: int, topic: str, difficulty: float, rnd: random.Random) -> str:
    """The stem names the kind and topic; harder samples get more qualifying clauses."""
    stem = rnd.choice(STEMS[KINDS[kind]]).format(t=topic)
    n_clauses = int(difficulty * 4.0)
    return " ".join([stem] + rnd.sample(CLAUSES, n_clauses))


def _options(kind: int, rnd: random.Random, n: int = 4) -> list[str]:
    return rnd.sample(ANSWER_WORDS[KINDS[kind]], n)


def _indices(rnd: random.Random, n: int, base: int, span: int) -> list[int]:
    """Sorted distinct integer indices with gaps, as real TSV indices have."""
    return sorted(rnd.sample(range(base, base + max(span, n)), n))


def _latents(key: str, n: int, rnd: random.Random) -> list[tuple[int, float, str]]:
    """(kind, difficulty, topic) per sample, drawn from the dataset's kind mix."""
    mix = KIND_MIX[key]
    out = []
    for _ in range(n):
        kind = rnd.choices(range(len(KINDS)), weights=mix)[0]
        difficulty = rnd.betavariate(2.0, 2.0)
        out.append((kind, difficulty, rnd.choice(TOPICS[KINDS[kind]])))
    return out


_MMSTAR_BENCHES = ["MMBench", "SEEDBench_IMG", "MathVista", "AI2D", "MMMU", "ScienceQA"]


def _mcq_row(key: str, question: str, options: dict[str, str | None], answer: str, topic: str,
             rnd: random.Random, subject_counts: dict[str, int]) -> tuple[dict[str, Any], str | None]:
    """The TSV columns of one MCQ dataset row, and MMMU's string `id` (None elsewhere)."""
    cat, l2 = rnd.choice(MCQ_CATEGORIES.get(key, [("", "")]))
    if key == "MMBench_DEV_EN_V11":
        hint = f"The picture shows a {topic}." if rnd.random() < 0.4 else None
        return {"question": question, "hint": hint, **options, "answer": answer,
                "category": cat, "l2-category": l2, "split": "dev"}, None
    if key == "MMStar":  # the upstream TSV embeds the options in the question text
        listed = ", ".join(f"{c}: {v}" for c, v in options.items())
        return {"question": f"{question}\nOptions: {listed}", "answer": answer, "category": cat,
                "l2_category": l2, "bench": rnd.choice(_MMSTAR_BENCHES), **options}, None
    if key == "MMMU_DEV_VAL":  # ids like validation_Art_1, numbered per subject
        split = "dev" if rnd.random() < 1 / 7 else "validation"
        subject_counts[cat] = subject_counts.get(cat, 0) + 1
        mmmu_id = f"{split}_{cat}_{subject_counts[cat]}"
        return {"question": f"<image 1> {question}", **options, "answer": answer, "id": mmmu_id,
                "category": cat, "l2-category": l2, "split": split}, mmmu_id
    if key == "AI2D_TEST":
        return {"question": question, **options, "answer": answer, "category": cat}, None
    return {"question": question, **options, "answer": answer}, None  # RealWorldQA


def plan_mcq(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """MCQ datasets: options A-D (RealWorldQA sometimes only A-C), a letter answer."""
    letters = "ABCD"
    samples = []
    # MMBench indices spread over the rotated-copy range, as the main questions' indices do
    span = FULL_SCALE_COUNTS[key] * (3 if key == "MMBench_DEV_EN_V11" else 1)
    subject_counts: dict[str, int] = {}
    for i, (kind, diff, topic) in zip(_indices(rnd, n, 0, span), _latents(key, n, rnd)):
        n_opt = 3 if key == "RealWorldQA" and rnd.random() < 0.3 else 4
        opts = _options(kind, rnd, n_opt)
        options = {c: (opts[j] if j < n_opt else None) for j, c in enumerate(letters)}
        answer = letters[rnd.randrange(n_opt)]
        row, mmmu_id = _mcq_row(key, _question(kind, topic, diff, rnd), options, answer, topic,
                                rnd, subject_counts)
        gold = {"answer": answer, "options": {c: v for c, v in options.items() if v is not None}}
        samples.append(Sample(i, mmmu_id or str(i), kind, diff, topic, row, gold,
                              guess=1.0 / n_opt))
    return DatasetPlan(key, list(samples[0].row) if samples else [], samples)


_YORN_STEMS = {
    "chart": "Does the bar chart show that {t} is highest in the first year?",
    "text": "Is the {t} in the image dated before 2010?",
    "shapes": "Is the shaded {t} larger than the other figures?",
    "scene": "Is there a dog in the {t}?",
    "diagram": "Does the {t} in the diagram form a closed loop?",
}


def plan_yorn(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """HallusionBench: string indices '<VD|VS>_<cat>_<sub>_<set>_<figure>_<question>'.

    Two questions share each figure; the second row back-references the first row's image.
    """
    samples: list[Sample] = []
    for figure, (kind, diff, topic) in enumerate(_latents(key, (n + 1) // 2, rnd)):
        vd = rnd.choice(["VD", "VS"])
        l2 = {"chart": "chart", "text": "ocr", "shapes": "math", "scene": "illusion",
              "diagram": "figure"}[KINDS[kind]]
        sub = rnd.randrange(3)
        for q in range(2):
            if len(samples) == n:
                break
            index = f"{vd}_{l2}_{sub}_{figure // 3}_{figure % 3}_{q}"
            answer = rnd.choice(["Yes", "No"])
            clauses = _question(kind, topic, diff, rnd).split("?", 1)[1].strip()
            question = " ".join(x for x in (_YORN_STEMS[KINDS[kind]].format(t=topic), clauses) if x)
            row = {"category": vd, "l2-category": l2, "question": question, "answer": answer}
            ref = samples[-1].index if q == 1 else None
            samples.append(Sample(index, index, kind, diff, topic, row, {"answer": answer},
                                  image_ref=ref, guess=0.5))
    return DatasetPlan(key, ["category", "l2-category", "question", "answer"], samples)


def _plan_textvqa(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """TextVQA: ten human answers; the main answer appears k times, the rest are singletons."""
    samples = []
    idx = _indices(rnd, n, 34602, FULL_SCALE_COUNTS[key])
    for i, (kind, diff, topic) in zip(idx, _latents(key, n, rnd)):
        words = ANSWER_WORDS[KINDS[kind]]
        main = rnd.choice(words).lower()
        k = rnd.choices([10, 8, 6, 4, 3, 2], weights=[45, 20, 12, 10, 8, 5])[0]
        alts = [f"{main} {pseudo_word(rnd, 1)}{j}" for j in range(10 - k)]
        golds = [main] * k + alts
        rnd.shuffle(golds)
        row = {"question": _question(kind, topic, diff, rnd), "answer": repr(golds)}
        samples.append(Sample(i, str(i), kind, diff, topic, row,
                              {"golds": golds, "main": main, "alts": alts}))
    return DatasetPlan(key, ["question", "answer"], samples)


def _plan_chartqa(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    samples = []
    for i, (kind, diff, topic) in enumerate(_latents(key, n, rnd)):
        if rnd.random() < 0.7:
            gold = str(rnd.choice([rnd.randint(2, 95), round(rnd.uniform(1, 60), 1)]))
        else:
            gold = rnd.choice(ANSWER_WORDS["chart"])
        row = {"question": _question(kind, topic, diff, rnd), "answer": gold,
               "split": "human" if rnd.random() < 0.5 else "augmented"}
        samples.append(Sample(i, str(i), kind, diff, topic, row, {"golds": [gold]}))
    return DatasetPlan(key, ["question", "answer", "split"], samples)


def plan_vqa(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """VQA-accuracy datasets: ChartQA (one gold, relaxed accuracy) or TextVQA (ten human answers)."""
    # the same test VLMEvalKit's hit_calculate uses to pick relaxed accuracy
    return (_plan_chartqa if "ChartQA" in key else _plan_textvqa)(key, n, rnd)


def plan_anls(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """DocVQA / InfoVQA: one to three gold spellings per question."""
    samples = []
    idx = _indices(rnd, n, 1 if key == "DocVQA_VAL" else 65000, FULL_SCALE_COUNTS[key] * 2)
    for i, (kind, diff, topic) in zip(idx, _latents(key, n, rnd)):
        pick = rnd.random()
        if pick < 0.4:
            base = f"{rnd.randint(1, 999)}.{rnd.randint(0, 99):02d}"
            golds = [base, f"${base}"]
        elif pick < 0.7:
            suffix = rnd.choice(["Ltd", "Inc", "Group", "Co"])
            golds = [f"{pseudo_word(rnd, 2).capitalize()} {suffix}"]
        else:
            month = rnd.choice(["March", "June", "July", "October"])
            base = f"{month} {rnd.randint(1, 28)}, {rnd.randint(1960, 2020)}"
            golds = [base, base.replace(",", "")]
        row = {"question": _question(kind, topic, diff, rnd), "answer": repr(golds)}
        samples.append(Sample(i, str(i), kind, diff, topic, row, {"golds": golds}))
    return DatasetPlan(key, ["question", "answer"], samples)


def plan_ocrbench(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """OCRBench: gold answers are coined words with digits, so filler text never contains them."""
    samples = []
    for i, (kind, diff, topic) in enumerate(_latents(key, n, rnd)):
        category = rnd.choice(OCR_CATEGORIES)
        if category == HANDWRITTEN_MATH:
            a, b = rnd.randint(2, 9), rnd.randint(2, 9)
            golds = [f"\\frac{{{a}}}{{{b}}}+x^{{{a}}}={b}"]
            question = "Please write out the expression of the formula in the image using LaTeX format."
        else:
            word = pseudo_word(rnd, 2)
            golds = [f"{word.upper()}{rnd.randint(10, 99)}"]
            if rnd.random() < 0.3:
                golds.append(golds[0].lower())
            question = _question(kind, topic, diff, rnd)
        row = {"question": question, "answer": repr(golds), "category": category}
        samples.append(Sample(i, str(i), kind, diff, topic, row, {"golds": golds}))
    return DatasetPlan(key, ["question", "answer", "category"], samples)


def plan_mathvista(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """MathVista: multiple choice (letters via answer_option) or integer / float free form."""
    samples = []
    idx = _indices(rnd, n, 1, FULL_SCALE_COUNTS[key])
    for i, (kind, diff, topic) in zip(idx, _latents(key, n, rnd)):
        question = _question(kind, topic, diff, rnd)
        precision: float | None = None
        if rnd.random() < 0.5:
            choices = [str(v) for v in rnd.sample(range(1, 90), 4)]
            opt = rnd.randrange(4)
            answer, qtype, atype, option = choices[opt], "multi_choice", "text", "ABCD"[opt]
            question += "\nChoices:\n" + "\n".join(f"({l}) {c}" for l, c in zip("ABCD", choices))
            choices_cell: str | None = repr(choices)
        elif rnd.random() < 0.7:
            answer, qtype, atype, option, choices_cell = (str(rnd.randint(1, 120)), "free_form",
                                                          "integer", None, None)
        else:
            precision = float(rnd.choice([1, 2]))
            answer = f"{rnd.uniform(0.5, 20):.{int(precision)}f}"
            qtype, atype, option, choices_cell = "free_form", "float", None, None
        row = {"question": question, "answer": answer, "choices": choices_cell,
               "answer_option": option, "question_type": qtype, "answer_type": atype,
               "precision": precision,
               "unit": "cm" if KINDS[kind] == "shapes" and qtype == "free_form" else None,
               "task": MATHVISTA_TASKS[KINDS[kind]], "skills": repr(rnd.sample(MATHVISTA_SKILLS, 2))}
        samples.append(Sample(i, str(i), kind, diff, topic, row, dict(row),
                              guess=0.25 if qtype == "multi_choice" else 0.0))
    return DatasetPlan(key, list(samples[0].row) if samples else [], samples)


def plan_mathvision(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """MathVision: options drawn in the image, listed in the question, or none (free form)."""
    samples = []
    idx = _indices(rnd, n, 1, 3040)
    for i, (kind, diff, topic) in zip(idx, _latents(key, n, rnd)):
        question = _question(kind, topic, diff, rnd)
        pick = rnd.random()
        if pick < 0.35:  # options are drawn in the image
            choices, answer = ["A", "B", "C", "D", "E"], rnd.choice("ABCDE")
        elif pick < 0.62:
            choices = [str(v) for v in rnd.sample(range(1, 60), 5)]
            answer = rnd.choice("ABCDE")
            question += "\n" + "\n".join(f"({l}) {c}" for l, c in zip("ABCDE", choices))
        else:
            choices, answer = [], str(rnd.randint(1, 200))
        row = {"question": question, "answer": answer, "choices": repr(choices),
               "category": rnd.choice(MATHVISION_SUBJECTS), "level": rnd.randint(1, 5)}
        samples.append(Sample(i, str(i), kind, diff, topic, row,
                              {"answer": answer, "choices": choices},
                              guess=0.2 if choices else 0.0))
    return DatasetPlan(key, ["question", "answer", "choices", "category", "level"],
                       samples)


def plan_mathverse(key: str, n: int, rnd: random.Random) -> DatasetPlan:
    """MathVerse: each problem in five versions; Text Lite reuses the Text Dominant image."""
    samples: list[Sample] = []
    n_problems = (n + 4) // 5
    pids = sorted(rnd.sample(range(max(788, n_problems)), n_problems))
    for pid, (kind, diff, topic) in zip(pids, _latents(key, n_problems, rnd)):
        base_q = _question(kind, topic, diff, rnd)
        mc = rnd.random() < 0.5
        if mc:
            choices = [str(v) for v in rnd.sample(range(2, 80), 4)]
            answer = rnd.choice("ABCD")
            base_q += "\nChoices:\n" + "\n".join(f"{l}:{c}" for l, c in zip("ABCD", choices))
        else:
            answer = str(rnd.randint(2, 150))
        meta = repr({"split": "testmini", "source": rnd.choice(["GeoQA", "Geometry3K", "UniGeo"]),
                     "subject": "plane geometry" if KINDS[kind] == "shapes" else "functions",
                     "subfield": rnd.choice(["length", "angle", "area", "analytic"])})
        for v, version in enumerate(MATHVERSE_VERSIONS):
            if len(samples) == n:
                break
            index = pid * 5 + v + 1
            # the vision-heavy versions move the text into the image
            if v < 3:
                q_eval = base_q
            elif v == 3:
                q_eval = base_q.split("?")[0] + "?"
            else:
                q_eval = "Please answer the question shown in the image."
            row = {"question": f"{q_eval}\n{MATHVERSE_DIRECT}", "answer": answer,
                   "question_for_eval": q_eval, "problem_version": version, "metadata": meta,
                   "query_cot": f"{q_eval}\n{MATHVERSE_COT}"}
            ref = samples[-1].index if v == 1 else None
            samples.append(Sample(index, str(index), kind, diff, topic, row,
                                  {"answer": answer, "mc": mc}, image_ref=ref,
                                  offset=MATHVERSE_VERSION_OFFSET[v], guess=0.25 if mc else 0.0))
    columns = ["question", "answer", "question_for_eval", "problem_version", "metadata", "query_cot"]
    return DatasetPlan(key, columns, samples)
