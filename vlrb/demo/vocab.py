"""The words the demo draws from: topics, question stems, answers, filler text and per-dataset labels.

Topics and stems name a sample's visual kind, so the question text carries what a router can learn.
"""
from __future__ import annotations

import random

from vlrb.demo.world import HANDWRITTEN_MATH

TOPICS = {
    "chart": ["sales", "rainfall", "population", "revenue", "temperature", "exports", "votes",
              "energy use"],
    "text": ["invoice", "menu", "receipt", "letter", "poster", "form", "report", "label"],
    "shapes": ["triangle", "circle", "square", "polygon", "angle", "segment", "rectangle",
               "hexagon"],
    "scene": ["street", "park", "kitchen", "beach", "forest", "market", "garden", "harbor"],
    "diagram": ["food web", "life cycle", "circuit", "water cycle", "flowchart", "solar system",
                "plant parts", "rock cycle"],
}
STEMS = {
    "chart": ["Which category has the highest {t} in the bar chart?",
              "What is the {t} value shown by the tallest bar?",
              "How many bars in the chart show {t} above the average?",
              "By how much does the {t} of the first bar exceed the last one?"],
    "text": ["What is the total amount written on the {t}?",
             "What name is printed at the top of the {t}?",
             "Which date appears on the {t}?",
             "What is the reference number on the {t}?"],
    "shapes": ["What is the measure of the marked angle in the {t}?",
               "How many sides does the shaded {t} have?",
               "What is the length of the side labelled x in the {t}?",
               "What is the area of the {t} shown in the figure?"],
    "scene": ["What is the person in the {t} holding?",
              "How many vehicles are visible in the {t}?",
              "What color is the largest object in the {t}?",
              "Where is the dog in the {t}?"],
    "diagram": ["Which stage comes after the first one in the {t}?",
                "In the {t} diagram, which part is labelled B?",
                "What does the arrow in the {t} point to?",
                "Which element of the {t} depends on all the others?"],
}
# Harder samples read harder: more qualifying clauses in the question.
CLAUSES = ["Consider every labelled element carefully.",
           "Ignore the decorations in the background.",
           "Note that some of the items overlap each other.",
           "Several parts look alike, so compare them one by one.",
           "Only count the items that are fully visible.",
           "Give the value as precisely as the figure allows."]
ANSWER_WORDS = {
    "chart": ["2019", "2020", "2021", "Germany", "France", "Japan", "Brazil", "Q3", "Q4", "north"],
    "text": ["Johnson", "Miller", "Acme Ltd", "March 3", "June 12", "Room 204", "Oakwood",
             "Baker St"],
    "shapes": ["30 degrees", "45 degrees", "60 degrees", "five", "six", "eight", "12 cm", "7 cm"],
    "scene": ["umbrella", "bicycle", "red", "blue", "a cup", "three", "two", "on the bench",
              "a kite", "green"],
    "diagram": ["larva", "pupa", "the sun", "roots", "battery", "evaporation", "the stem",
                "the owl"],
}
# no "a" or "I": a capitalised first word "A" would read as option A to a rule matcher
FILLER_WORDS = (
    "the image shows one clear view of several items so we need to look at each part and compare "
    "them with the question first note that this one is larger than that one which means the "
    "answer should follow from the values in the figure let me check again carefully because "
    "some labels are small it seems the left side has more while the right side has less then "
    "we count them one by one and add the results together this gives the total that matches the "
    "option here however we must also consider the scale on the axis and the units used in the "
    "problem therefore after checking the other choices they do not fit as well also the color "
    "and position suggest the same result in summary based on the evidence above we think it is "
    "correct to pick this answer = + 2 3 4 5 x y angle side length area step"
).split()
SYLLABLES = ["ko", "lv", "ex", "ra", "zen", "tor", "mi", "qu", "vas", "dri", "pel", "nox", "ul",
             "bri", "sta", "gor", "fen", "lim", "yx", "cad"]
MCQ_CATEGORIES = {
    "MMBench_DEV_EN_V11": [("image_scene", "coarse_perception"), ("ocr", "fine_grained_perception"),
                           ("physical_relation", "relation_reasoning"),
                           ("attribute_recognition", "fine_grained_perception"),
                           ("future_prediction", "logic_reasoning")],
    "MMStar": [("coarse perception", "image scene and topic"),
               ("fine-grained perception", "attribute reasoning"),
               ("instance reasoning", "single-instance reasoning"),
               ("logical reasoning", "diagram reasoning"), ("math", "geometry"),
               ("science & technology", "natural science")],
    "MMMU_DEV_VAL": [("Art", "Art & Design"), ("Biology", "Science"), ("Physics", "Science"),
                     ("Accounting", "Business"), ("Geography", "Humanities & Social Science"),
                     ("Electronics", "Tech & Engineering"), ("Math", "Science")],
    "AI2D_TEST": [("life cycles", ""), ("food chains webs", ""), ("parts of the earth", ""),
                  ("circuits", ""), ("moon phase equinox", "")],
}
OCR_CATEGORIES = ["Regular Text Recognition", "Irregular Text Recognition",
                  "Artistic Text Recognition", "Handwriting Recognition",
                  "Digit String Recognition", "Non-Semantic Text Recognition",
                  "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
                  HANDWRITTEN_MATH]
MATHVISION_SUBJECTS = ["algebra", "analytic geometry", "arithmetic", "combinatorial geometry",
                       "counting", "graph theory", "logic", "metric geometry - angle",
                       "metric geometry - area", "solid geometry", "statistics"]
MATHVERSE_VERSIONS = ["Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant",
                      "Vision Only"]
MATHVERSE_VERSION_OFFSET = [0.3, 0.1, 0.0, -0.2, -0.4]
MATHVERSE_DIRECT = "Please directly answer the question and provide the correct option letter or value."
MATHVERSE_COT = "Please first conduct reasoning, and then answer the question."
MATHVISTA_SKILLS = ["arithmetic reasoning", "statistical reasoning", "geometry reasoning",
                    "algebraic reasoning", "numeric commonsense"]
MATHVISTA_TASKS = {"chart": "figure question answering", "text": "textbook question answering",
                   "shapes": "geometry problem solving", "scene": "visual question answering",
                   "diagram": "math word problem"}


def pseudo_word(rnd: random.Random, n: int = 3) -> str:
    return "".join(rnd.choice(SYLLABLES) for _ in range(n))
