"""English paragraphs built from templates and word lists written for this project."""

from .base import Paragraph, cap


def _verb(base, past=None, pp=None, s=None, ing=None):
    if s is None:
        if base.endswith(("s", "sh", "ch", "x", "o")):
            s = base + "es"
        elif base.endswith("y") and base[-2] not in "aeiou":
            s = base[:-1] + "ies"
        else:
            s = base + "s"
    if past is None:
        if base.endswith("e"):
            past = base + "d"
        elif base.endswith("y") and base[-2] not in "aeiou":
            past = base[:-1] + "ied"
        else:
            past = base + "ed"
    if ing is None:
        ing = base[:-1] + "ing" if base.endswith("e") and not base.endswith("ee") else base + "ing"
    return {"base": base, "s": s, "past": past, "pp": pp or past, "ing": ing}


PEOPLE = [
    ("teacher", "teachers"), ("student", "students"), ("engineer", "engineers"), ("farmer", "farmers"),
    ("doctor", "doctors"), ("nurse", "nurses"), ("painter", "painters"), ("baker", "bakers"),
    ("driver", "drivers"), ("scientist", "scientists"), ("musician", "musicians"), ("writer", "writers"),
    ("librarian", "librarians"), ("gardener", "gardeners"), ("pilot", "pilots"), ("chef", "chefs"),
    ("carpenter", "carpenters"), ("programmer", "programmers"), ("shopkeeper", "shopkeepers"),
    ("fisherman", "fishermen"), ("traveler", "travelers"), ("neighbor", "neighbors"), ("child", "children"),
    ("journalist", "journalists"), ("architect", "architects"), ("mechanic", "mechanics"),
    ("photographer", "photographers"), ("researcher", "researchers"), ("mayor", "mayors"),
    ("grandmother", "grandmothers"),
]  # fmt: skip
NAMES = [
    ("Anna", "she"), ("Peter", "he"), ("Maria", "she"), ("David", "he"), ("Lucy", "she"), ("Tom", "he"),
    ("Sarah", "she"), ("James", "he"), ("Emma", "she"), ("Oliver", "he"), ("Grace", "she"), ("Henry", "he"),
    ("Alice", "she"), ("Samuel", "he"), ("Nora", "she"), ("Leo", "he"), ("Ruth", "she"), ("Victor", "he"),
]  # fmt: skip
PERSON_ADJ = [
    "young", "old", "tired", "cheerful", "patient", "careful", "busy", "quiet", "curious", "clever",
    "friendly", "nervous", "proud", "famous", "local", "hungry",
]  # fmt: skip
ANIMALS = [
    ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"), ("fox", "foxes"),
    ("rabbit", "rabbits"), ("cow", "cows"), ("goat", "goats"), ("owl", "owls"), ("duck", "ducks"),
]  # fmt: skip
ANIMAL_VERBS = [_verb("sleep", "slept"), _verb("rest"), _verb("wait"), _verb("play"), _verb("hide", "hid", "hidden")]

# Objects are (singular, plural, kind); kind "mass" takes no article "a" and no number.
CATEGORIES = {
    "food": {
        "objects": [
            ("bread", None, "mass"), ("soup", None, "mass"), ("cake", "cakes", "count"), ("rice", None, "mass"),
            ("apple", "apples", "count"), ("salad", "salads", "count"), ("fish", None, "mass"),
            ("cheese", None, "mass"), ("pie", "pies", "count"), ("dumpling", "dumplings", "count"),
            ("pancake", "pancakes", "count"), ("sandwich", "sandwiches", "count"), ("tomato", "tomatoes", "count"),
        ],
        "adjs": ["fresh", "warm", "sweet", "spicy", "simple", "delicious", "cold", "homemade"],
        "verbs": [
            _verb("cook"), _verb("eat", "ate", "eaten"), _verb("buy", "bought"), _verb("prepare"),
            _verb("taste"), _verb("share"), _verb("sell", "sold"), _verb("bring", "brought"),
        ],
    },
    "drinks": {
        "objects": [
            ("tea", None, "mass"), ("coffee", None, "mass"), ("milk", None, "mass"), ("juice", None, "mass"),
            ("lemonade", None, "mass"), ("cocoa", None, "mass"),
        ],
        "adjs": ["hot", "cold", "sweet", "strong", "fresh", "bitter"],
        "verbs": [
            _verb("drink", "drank", "drunk"), _verb("buy", "bought"), _verb("make", "made"), _verb("pour"),
            _verb("order"), _verb("share"),
        ],
    },
    "docs": {
        "objects": [
            ("letter", "letters", "count"), ("report", "reports", "count"), ("book", "books", "count"),
            ("poem", "poems", "count"), ("article", "articles", "count"), ("map", "maps", "count"),
            ("recipe", "recipes", "count"), ("story", "stories", "count"), ("email", "emails", "count"),
            ("contract", "contracts", "count"), ("notebook", "notebooks", "count"), ("manual", "manuals", "count"),
        ],
        "adjs": ["long", "short", "detailed", "old", "new", "careful", "strange", "important", "funny"],
        "verbs": [
            _verb("read", "read"), _verb("write", "wrote", "written"), _verb("translate"), _verb("print"),
            _verb("sign"), _verb("finish"), _verb("review"), _verb("copy"), _verb("send", "sent"),
        ],
    },
    "structures": {
        "objects": [
            ("bridge", "bridges", "count"), ("house", "houses", "count"), ("wall", "walls", "count"),
            ("fence", "fences", "count"), ("garden", "gardens", "count"), ("library", "libraries", "count"),
            ("tower", "towers", "count"), ("school", "schools", "count"), ("road", "roads", "count"),
            ("boat", "boats", "count"), ("roof", "roofs", "count"), ("kitchen", "kitchens", "count"),
            ("museum", "museums", "count"), ("station", "stations", "count"),
        ],
        "adjs": ["old", "new", "small", "wooden", "stone", "narrow", "tall", "beautiful", "empty", "famous"],
        "verbs": [
            _verb("build", "built"), _verb("paint"), _verb("repair"), _verb("visit"), _verb("clean"),
            _verb("design"), _verb("photograph"),
        ],
    },
    "machines": {
        "objects": [
            ("engine", "engines", "count"), ("computer", "computers", "count"), ("bicycle", "bicycles", "count"),
            ("printer", "printers", "count"), ("radio", "radios", "count"), ("clock", "clocks", "count"),
            ("camera", "cameras", "count"), ("tractor", "tractors", "count"), ("server", "servers", "count"),
            ("robot", "robots", "count"), ("pump", "pumps", "count"), ("lamp", "lamps", "count"),
            ("washing machine", "washing machines", "count"),
        ],
        "adjs": ["broken", "new", "old", "noisy", "small", "heavy", "expensive", "reliable"],
        "verbs": [
            _verb("repair"), _verb("test"), _verb("start"), _verb("clean"), _verb("carry"), _verb("check"),
            _verb("install"),
        ],
    },
}  # fmt: skip
INTRANSITIVE = [
    _verb("walk"), _verb("sleep", "slept"), _verb("laugh"), _verb("work"), _verb("wait"), _verb("travel"),
    _verb("sing", "sang", "sung"), _verb("rest"), _verb("listen"), _verb("study"), _verb("smile"),
    _verb("run", "ran", "run", ing="running"), _verb("swim", "swam", "swum", ing="swimming"),
]  # fmt: skip
PLACES = [
    "in the kitchen", "at the market", "near the river", "in the old town", "behind the station", "on the hill",
    "in the library", "at the harbor", "in the workshop", "by the lake", "in a small village",
    "at the university", "on the train", "in the garden", "in the office", "at the laboratory",
    "on the beach", "in the city center",
]  # fmt: skip
TIMES = {
    "past": [
        "yesterday", "last week", "this morning", "two days ago", "on Monday", "after lunch", "last winter",
        "in the evening", "an hour ago", "last summer",
    ],
    "present": ["every morning", "on weekends", "every day", "in the afternoon", "twice a week", "every evening"],
    "future": ["tomorrow", "next week", "on Friday", "later this year", "next month", "in the spring"],
}  # fmt: skip
MANNERS = [
    "quickly", "slowly", "carefully", "quietly", "happily", "patiently", "with great care", "without a word",
    "together", "in silence",
]  # fmt: skip
REASONS = [
    "it was raining", "the shop was closed", "the road was blocked", "everyone was hungry",
    "the train was late", "it was very cold", "the old one was broken", "there was no time left",
    "the weather was beautiful", "the guests were coming",
]  # fmt: skip
COMPARATIVES = [
    ("older", "structures"), ("newer", "machines"), ("smaller", "structures"), ("larger", "structures"),
    ("heavier", "machines"), ("quieter", "machines"), ("taller", "structures"), ("longer", "docs"),
    ("shorter", "docs"), ("more expensive", "machines"), ("more interesting", "docs"), ("sweeter", "food"),
]  # fmt: skip
PRICED_FOOD = ["apples", "cheese", "rice", "fish", "tomatoes", "bread", "coffee"]
LANGUAGES = ["Python", "Rust", "Go", "C++", "Java", "SQL"]


def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


class English(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_statement", 6), ("s_intransitive", 2), ("s_negative", 1), ("s_because", 2), ("s_reported", 1),
        ("s_question", 1), ("s_number", 1), ("s_there_is", 1), ("s_list", 1), ("s_compare", 1),
        ("s_sequence", 1), ("s_plan", 1),
    ]  # fmt: skip

    def subject(self):
        """Return (text, agreement) with agreement in {"3sg", "pl", "1sg"}."""
        r = self.rng.random()
        if r < 0.35:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun, "3sg"
            self.mentioned = True
            return self.name, "3sg"
        if r < 0.45:
            return self.pick([("I", "1sg"), ("we", "pl"), ("they", "pl"), ("my sister", "3sg")])
        sg, pl = self.pick(PEOPLE)
        adj = self.pick(PERSON_ADJ) + " " if self.rng.random() < 0.4 else ""
        if self.rng.random() < 0.7:
            det = self.pick(["the", "the", "a", "our", "my", "this"])
            phrase = f"{det} {adj}{sg}"
            if det == "a":
                phrase = _a(adj + sg)
            return phrase, "3sg"
        det = self.pick(["the", "some", "two", "three", "many", "several", "our"])
        return f"{det} {adj}{pl}", "pl"

    def pronoun_for(self, subj, agreement):
        if subj in ("I", "we", "they"):
            return subj
        return "they" if agreement == "pl" else self.pronoun

    def obj(self, data, allow_plural=True):
        sg, pl, kind = self.pick(data["objects"])
        adj = self.pick(data["adjs"]) + " " if self.rng.random() < 0.45 else ""
        if kind == "mass":
            det = self.pick(["the ", "some ", "", "our ", "this "])
            return f"{det}{adj}{sg}"
        if allow_plural and self.rng.random() < 0.3:
            return f"{self.pick(['the', 'some', 'two', 'three', 'four', 'several', 'their'])} {adj}{pl}"
        det = self.pick(["the", "a", "a", "this", "that", "her", "his"])
        return _a(adj + sg) if det == "a" else f"{det} {adj}{sg}"

    def verb_phrase(self, verb, agreement, tense):
        if tense == "past":
            return verb["past"]
        if tense == "future":
            return "will " + verb["base"]
        if tense == "progressive":
            aux = {"3sg": "is", "pl": "are", "1sg": "am"}[agreement]
            return f"{aux} {verb['ing']}"
        if tense == "perfect":
            return ("has " if agreement == "3sg" else "have ") + verb["pp"]
        return verb["s"] if agreement == "3sg" else verb["base"]

    def clause(self, tense=None, with_time=True):
        data = self.category_data()
        subj, agr = self.subject()
        tense = tense or self.pick(["past", "past", "present", "future", "progressive", "perfect"])
        verb = self.pick(data["verbs"])
        parts = [subj, self.verb_phrase(verb, agr, tense), self.obj(data)]
        if self.rng.random() < 0.5:
            parts.append(self.pick(PLACES))
        time_key = {"progressive": None, "perfect": None}.get(tense, tense)
        if with_time and time_key and self.rng.random() < 0.5:
            parts.append(self.pick(TIMES[time_key]))
        return " ".join(parts)

    def s_statement(self):
        if self.rng.random() < 0.25:
            tense = self.pick(["past", "future", "present"])
            return f"{cap(self.pick(TIMES[tense]))}, {self.clause(tense, with_time=False)}."
        return cap(self.clause()) + "."

    def s_intransitive(self):
        if self.rng.random() < 0.25:
            sg, pl = self.pick(ANIMALS)
            verb = self.pick(ANIMAL_VERBS)
            if self.rng.random() < 0.5:
                return f"The {sg} {verb['past']} {self.pick(PLACES)}."
            return f"The {pl} {verb['base']} {self.pick(PLACES)} {self.pick(TIMES['present'])}."
        subj, agr = self.subject()
        tense = self.pick(["past", "present", "future", "progressive"])
        parts = [subj, self.verb_phrase(self.pick(INTRANSITIVE), agr, tense), self.pick(MANNERS)]
        if self.rng.random() < 0.6:
            parts.append(self.pick(PLACES))
        return cap(" ".join(parts)) + "."

    def s_negative(self):
        data = self.category_data()
        subj, agr = self.subject()
        v1, v2 = self.pick(data["verbs"]), self.pick(data["verbs"])
        pron = self.pronoun_for(subj, agr)
        return (
            f"{cap(subj)} did not {v1['base']} {self.obj(data)} {self.pick(TIMES['past'])}, "
            f"but {pron} {v2['past']} {self.obj(data)}."
        )

    def s_because(self):
        if self.rng.random() < 0.5:
            return f"{cap(self.clause('past'))} because {self.pick(REASONS)}."
        return f"Because {self.pick(REASONS)}, {self.clause('past')}."

    def s_reported(self):
        name = self.pick(NAMES)[0]
        if self.rng.random() < 0.5:
            return f"{name} said that {self.clause('past')}."
        verb = self.pick(["said", "explained", "added", "replied", "whispered"])
        return f'"{cap(self.clause("future"))}," {name} {verb}.'

    def s_question(self):
        data = self.category_data()
        verb = self.pick(data["verbs"])
        subj, agr = self.subject()
        r = self.rng.random()
        if r < 0.3:
            return f"Did {subj} {verb['base']} {self.obj(data)} {self.pick(TIMES['past'])}?"
        if r < 0.55:
            return f"Where will {subj} {verb['base']} {self.obj(data)}?"
        if r < 0.8:
            aux = "does" if agr == "3sg" else "do"
            return f"Why {aux} {subj} {verb['base']} {self.obj(data)} {self.pick(TIMES['present'])}?"
        sg, pl, kind = self.pick(data["objects"])
        if kind == "mass":
            return f"How much {sg} did {subj} {verb['base']} {self.pick(TIMES['past'])}?"
        return f"How many {pl} did {subj} {verb['base']} {self.pick(PLACES)}?"

    def s_number(self):
        r = self.rng.random()
        if r < 0.2:
            sg = self.pick(CATEGORIES["structures"]["objects"])[0]
            unit = self.pick(["meters long", "meters tall", "meters wide"])
            return f"The {sg} is {self.rng.randint(3, 480)} {unit}."
        if r < 0.4:
            return f"In {self.rng.randint(1850, 2024)}, the town had {self.rng.randint(800, 250000):,} inhabitants."
        if r < 0.55:
            price = f"{self.rng.randint(1, 19)}.{self.rng.randint(0, 99):02d}"
            return f"A kilogram of {self.pick(PRICED_FOOD)} costs {price} dollars at the market."
        if r < 0.7:
            subj, _ = self.subject()
            return f"{cap(subj)} worked for {self.rng.randint(2, 14)} hours {self.pick(TIMES['past'])}."
        if r < 0.85:
            pl = self.pick(PEOPLE)[1]
            data = self.category_data()
            return (
                f"About {self.rng.randint(5, 95)} percent of the {pl} {self.pick(data['verbs'])['past']} "
                f"{self.obj(data)} {self.pick(PLACES)}."
            )
        lang = self.pick(LANGUAGES)
        return (
            f"The team wrote a small {lang} program that processes {self.rng.randint(100, 90000):,} records "
            f"in {self.rng.randint(2, 59)} seconds."
        )

    def s_there_is(self):
        data = self.category_data()
        tense = self.pick(["is", "was"])
        sg, pl, kind = self.pick(data["objects"])
        adj = self.pick(data["adjs"])
        if kind == "count" and self.rng.random() < 0.4:
            verb = "are" if tense == "is" else "were"
            return f"There {verb} {self.pick(['two', 'three', 'some', 'many'])} {adj} {pl} {self.pick(PLACES)}."
        noun = _a(f"{adj} {sg}") if kind == "count" else f"some {adj} {sg}"
        return f"There {tense} {noun} {self.pick(PLACES)}."

    def s_list(self):
        data = self.category_data()
        subj, _ = self.subject()
        verb = self.pick(data["verbs"])
        items = [self.obj(data) for _ in range(self.rng.randint(3, 4))]
        return f"{cap(subj)} {verb['past']} {', '.join(items[:-1])} and {items[-1]}."

    def s_compare(self):
        word, cat = self.pick(COMPARATIVES)
        objs = CATEGORIES[cat]["objects"]
        a, b = self.pick(objs)[0], self.pick(objs)[0]
        if a == b:
            return f"This {a} is {word} than the one {self.pick(PLACES)}."
        return f"The {a} was {word} than the {b}."

    def s_sequence(self):
        subj, agr = self.subject()
        data = self.category_data()
        first = f"{subj} {self.pick(data['verbs'])['past']} {self.obj(data)}"
        pron = self.pronoun_for(subj, agr)
        then = f"{pron} {self.pick(INTRANSITIVE)['past']} {self.pick(MANNERS)}"
        if self.rng.random() < 0.5:
            return f"After {first}, {then}."
        return f"{cap(first)}, and then {then}."

    def s_plan(self):
        data = self.category_data()
        subj, agr = self.subject()
        verb = self.pick(data["verbs"])
        if self.rng.random() < 0.5:
            plans = "plans" if agr == "3sg" else "plan"
            return f"{cap(subj)} {plans} to {verb['base']} {self.obj(data)} {self.pick(TIMES['future'])}."
        return f"{cap(subj)} wanted to {verb['base']} {self.obj(data)}, but {self.pick(REASONS)}."


paragraph = English.generate
