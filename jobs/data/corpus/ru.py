"""Russian paragraphs built from templates and word lists written for this project.

Nouns carry their case forms ready-made (nominative subjects, accusative objects), so no declension is needed.
"""

from random import Random

from .base import Paragraph, cap

PEOPLE = [
    ("учитель", "m"), ("студентка", "f"), ("инженер", "m"), ("врач", "m"), ("медсестра", "f"),
    ("художник", "m"), ("повар", "m"), ("писательница", "f"), ("садовник", "m"), ("журналистка", "f"),
    ("бабушка", "f"), ("сосед", "m"), ("механик", "m"), ("библиотекарь", "m"), ("фотограф", "m"),
]  # fmt: skip
NAMES = [("Анна", "она"), ("Иван", "он"), ("Мария", "она"), ("Дмитрий", "он"), ("Ольга", "она"),
         ("Сергей", "он"), ("Наталья", "она"), ("Алексей", "он"), ("Татьяна", "она"), ("Михаил", "он")]  # fmt: skip
# The past tense agrees with the subject's gender.
GENDERS = {"он": "m", "она": "f"}
PERSON_ADJ = [("молодой", "молодая"), ("старый", "старая"), ("усталый", "усталая"), ("весёлый", "весёлая"),
              ("внимательный", "внимательная"), ("известный", "известная")]  # fmt: skip

# Verbs are (present 3sg, past masculine, past feminine, infinitive); objects are accusative.
CATEGORIES = {
    "food": {
        "objects": ["хлеб", "суп", "пирог", "салат", "рыбу", "сыр", "кашу", "яблоко", "пельмени", "блины"],
        "verbs": [("ест", "ел", "ела", "есть"), ("покупает", "покупал", "покупала", "покупать"),
                  ("готовит", "готовил", "готовила", "готовить"), ("продаёт", "продавал", "продавала", "продавать")],
    },
    "drinks": {
        "objects": ["чай", "кофе", "молоко", "сок", "компот", "воду"],
        "verbs": [("пьёт", "пил", "пила", "пить"), ("покупает", "покупал", "покупала", "покупать"),
                  ("наливает", "наливал", "наливала", "наливать")],
    },
    "docs": {
        "objects": ["книгу", "письмо", "статью", "карту", "отчёт", "стихотворение", "договор", "тетрадь"],
        "verbs": [("читает", "читал", "читала", "читать"), ("пишет", "писал", "писала", "писать"),
                  ("переводит", "переводил", "переводила", "переводить"),
                  ("печатает", "печатал", "печатала", "печатать")],
    },
    "structures": {
        "objects": ["дом", "мост", "забор", "сад", "лодку", "крышу", "башню", "школу", "дорогу"],
        "verbs": [("строит", "строил", "строила", "строить"), ("чинит", "чинил", "чинила", "чинить"),
                  ("рисует", "рисовал", "рисовала", "рисовать"), ("красит", "красил", "красила", "красить")],
    },
    "machines": {
        "objects": ["компьютер", "велосипед", "двигатель", "принтер", "радио", "часы", "лампу", "насос", "трактор"],
        "verbs": [("чинит", "чинил", "чинила", "чинить"), ("проверяет", "проверял", "проверяла", "проверять"),
                  ("моет", "мыл", "мыла", "мыть"), ("настраивает", "настраивал", "настраивала", "настраивать")],
    },
}  # fmt: skip
INTRANSITIVE = [("спит", "спал", "спала"), ("работает", "работал", "работала"), ("поёт", "пел", "пела"),
                ("ждёт", "ждал", "ждала"), ("гуляет", "гулял", "гуляла"), ("отдыхает", "отдыхал", "отдыхала")]  # fmt: skip
PLACES = [
    "на кухне", "на рынке", "у реки", "в старом городе", "за вокзалом", "на холме", "в библиотеке", "в порту",
    "в мастерской", "у озера", "в маленькой деревне", "в университете", "в поезде", "в саду",
]  # fmt: skip
TIMES = {
    "past": ["вчера", "на прошлой неделе", "утром", "два дня назад", "в понедельник", "после обеда",
             "прошлой зимой", "вечером"],
    "present": ["каждое утро", "по выходным", "каждый день", "часто", "по вечерам"],
    "future": ["завтра", "на следующей неделе", "в пятницу", "скоро", "в следующем месяце"],
}  # fmt: skip
MANNERS = ["медленно", "быстро", "внимательно", "тихо", "весело", "вместе", "молча"]
REASONS = ["шёл дождь", "было холодно", "магазин был закрыт", "дорога была перекрыта", "все проголодались"]


class Russian(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_statement", 6), ("s_intransitive", 2), ("s_because", 2), ("s_question", 1), ("s_number", 1), ("s_quote", 1),
    ]  # fmt: skip
    SENTENCES = (3, 6)

    def __init__(self, rng: Random):
        super().__init__(rng)
        self.gender = GENDERS[self.pronoun]

    def subject(self):
        """Return (text, gender) because Russian past tense agrees with the subject's gender."""
        if self.rng.random() < 0.4:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun, self.gender
            self.mentioned = True
            return self.name, self.gender
        noun, gender = self.pick(PEOPLE)
        if self.rng.random() < 0.4:
            return f"{self.pick(PERSON_ADJ)[0 if gender == 'm' else 1]} {noun}", gender
        return noun, gender

    def clause(self, tense=None, with_time=True):
        data = self.category_data()
        tense = tense or self.pick(["present", "past", "past", "future"])
        subj, gender = self.subject()
        present, past_m, past_f, infinitive = self.pick(data["verbs"])
        verb = {
            "present": present,
            "past": past_m if gender == "m" else past_f,
            "future": "будет " + infinitive,
        }[tense]
        parts = [subj, verb, self.pick(data["objects"])]
        if self.rng.random() < 0.5:
            parts.append(self.pick(PLACES))
        if with_time and self.rng.random() < 0.4:
            parts.insert(0, self.pick(TIMES[tense]))
        return " ".join(parts)

    def s_statement(self):
        return cap(self.clause()) + "."

    def s_intransitive(self):
        subj, gender = self.subject()
        present, past_m, past_f = self.pick(INTRANSITIVE)
        verb = present if self.rng.random() < 0.5 else (past_m if gender == "m" else past_f)
        return f"{cap(subj)} {verb} {self.pick(MANNERS)} {self.pick(PLACES)}."

    def s_because(self):
        return f"{cap(self.clause('past'))}, потому что {self.pick(REASONS)}."

    def s_question(self):
        if self.rng.random() < 0.5:
            return f"Почему {self.clause('present', with_time=False)}?"
        return f"Правда, что {self.clause('past')}?"

    def s_number(self):
        year = self.rng.randint(1850, 2024)
        # Thousands from 5 to 20 keep "тысяч" in the genitive plural that the sentence needs.
        return f"В {year} году в городе жило {self.rng.randint(5, 20)} тысяч человек."

    def s_quote(self):
        verb = self.pick(["сказала", "ответила"]) if self.rng.random() < 0.5 else None
        name = self.pick([n for n, p in NAMES if p == "она"]) if verb else self.pick([n for n, p in NAMES if p == "он"])
        verb = verb or self.pick(["сказал", "ответил"])
        return f"«{cap(self.clause('future'))}», — {verb} {name}."


paragraph = Russian.generate
