"""German paragraphs built from templates and word lists written for this project."""

from .base import Paragraph, cap

DEFINITE = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}}
INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
# Adjective endings after a definite or an indefinite article (weak and mixed declension).
ENDINGS = {
    ("def", "nom"): {"m": "e", "f": "e", "n": "e"},
    ("def", "acc"): {"m": "en", "f": "e", "n": "e"},
    ("indef", "nom"): {"m": "er", "f": "e", "n": "es"},
    ("indef", "acc"): {"m": "en", "f": "e", "n": "es"},
}

PEOPLE = [
    ("Lehrer", "m"), ("Lehrerin", "f"), ("Ingenieurin", "f"), ("Arzt", "m"), ("Ärztin", "f"), ("Bäcker", "m"),
    ("Malerin", "f"), ("Fahrer", "m"), ("Gärtner", "m"), ("Pilotin", "f"), ("Koch", "m"), ("Journalistin", "f"),
    ("Mechaniker", "m"), ("Großmutter", "f"), ("Kind", "n"), ("Bürgermeisterin", "f"), ("Student", "m"),
    ("Fotografin", "f"),
]  # fmt: skip
NAMES = [("Lena", "sie"), ("Jonas", "er"), ("Mia", "sie"), ("Felix", "er"), ("Hanna", "sie"), ("Lukas", "er"),
         ("Greta", "sie"), ("Paul", "er"), ("Jürgen", "er"), ("Sören", "er"), ("Käthe", "sie")]  # fmt: skip
PERSON_ADJ = ["jung", "alt", "müde", "fröhlich", "geduldig", "neugierig", "fleißig", "ruhig", "klug"]

# Verbs are (present 3sg, participle with haben, infinitive).
CATEGORIES = {
    "food": {
        "objects": [("Brot", "n"), ("Suppe", "f"), ("Kuchen", "m"), ("Salat", "m"), ("Apfel", "m"),
                    ("Käse", "m"), ("Fisch", "m"), ("Gemüse", "n"), ("Brötchen", "n"), ("Torte", "f")],
        "adjs": ["frisch", "warm", "süß", "lecker", "einfach"],
        "verbs": [("isst", "gegessen", "essen"), ("kauft", "gekauft", "kaufen"), ("kocht", "gekocht", "kochen"),
                  ("verkauft", "verkauft", "verkaufen"), ("probiert", "probiert", "probieren"),
                  ("teilt", "geteilt", "teilen")],
    },
    "drinks": {
        "objects": [("Tee", "m"), ("Kaffee", "m"), ("Milch", "f"), ("Saft", "m"), ("Limonade", "f")],
        "adjs": ["heiß", "kalt", "süß", "stark", "bitter"],
        "verbs": [("trinkt", "getrunken", "trinken"), ("kauft", "gekauft", "kaufen"),
                  ("bestellt", "bestellt", "bestellen"), ("kocht", "gekocht", "kochen")],
    },
    "docs": {
        "objects": [("Brief", "m"), ("Bericht", "m"), ("Buch", "n"), ("Gedicht", "n"), ("Artikel", "m"),
                    ("Karte", "f"), ("Rezept", "n"), ("Geschichte", "f"), ("Vertrag", "m"), ("Heft", "n")],
        "adjs": ["lang", "kurz", "neu", "alt", "wichtig", "spannend"],
        "verbs": [("liest", "gelesen", "lesen"), ("schreibt", "geschrieben", "schreiben"),
                  ("übersetzt", "übersetzt", "übersetzen"), ("druckt", "gedruckt", "drucken"),
                  ("unterschreibt", "unterschrieben", "unterschreiben"), ("schickt", "geschickt", "schicken")],
    },
    "structures": {
        "objects": [("Brücke", "f"), ("Haus", "n"), ("Mauer", "f"), ("Zaun", "m"), ("Garten", "m"),
                    ("Bibliothek", "f"), ("Turm", "m"), ("Schule", "f"), ("Straße", "f"), ("Boot", "n"),
                    ("Museum", "n"), ("Bahnhof", "m")],
        "adjs": ["alt", "neu", "klein", "groß", "schmal", "schön", "hoch"],
        "verbs": [("baut", "gebaut", "bauen"), ("repariert", "repariert", "reparieren"), ("malt", "gemalt", "malen"),
                  ("besucht", "besucht", "besuchen"), ("putzt", "geputzt", "putzen"),
                  ("fotografiert", "fotografiert", "fotografieren")],
    },
    "machines": {
        "objects": [("Motor", "m"), ("Computer", "m"), ("Fahrrad", "n"), ("Drucker", "m"), ("Radio", "n"),
                    ("Uhr", "f"), ("Kamera", "f"), ("Traktor", "m"), ("Server", "m"), ("Roboter", "m"),
                    ("Pumpe", "f"), ("Lampe", "f")],
        "adjs": ["neu", "alt", "laut", "schwer", "klein", "zuverlässig"],
        "verbs": [("repariert", "repariert", "reparieren"), ("testet", "getestet", "testen"),
                  ("prüft", "geprüft", "prüfen"), ("reinigt", "gereinigt", "reinigen"),
                  ("trägt", "getragen", "tragen"), ("installiert", "installiert", "installieren")],
    },
}  # fmt: skip
INTRANSITIVE = [("schläft", "geschlafen"), ("arbeitet", "gearbeitet"), ("singt", "gesungen"),
                ("wartet", "gewartet"), ("lacht", "gelacht"), ("lernt", "gelernt"), ("tanzt", "getanzt")]  # fmt: skip
PLACES = [
    "in der Küche", "auf dem Markt", "am Fluss", "in der Altstadt", "hinter dem Bahnhof", "auf dem Hügel",
    "in der Bibliothek", "im Hafen", "in der Werkstatt", "am See", "in einem kleinen Dorf", "an der Universität",
    "im Zug", "im Garten", "im Büro",
]  # fmt: skip
TIMES = {
    "past": ["gestern", "letzte Woche", "heute Morgen", "vor zwei Tagen", "am Montag", "nach dem Mittagessen",
             "letzten Winter", "gestern Abend"],
    "present": ["jeden Morgen", "am Wochenende", "jeden Tag", "abends", "oft"],
    "future": ["morgen", "nächste Woche", "am Freitag", "bald", "nächsten Monat"],
}  # fmt: skip
MANNERS = ["langsam", "schnell", "sorgfältig", "leise", "fröhlich", "gemeinsam", "ohne ein Wort"]
REASONS = [
    "weil es regnete", "weil es sehr kalt war", "weil der Laden geschlossen war", "weil die Straße gesperrt war",
    "weil alle hungrig waren", "weil der Zug Verspätung hatte", "weil das Wetter schön war",
]  # fmt: skip
PRICED = ["Äpfel", "Käse", "Reis", "Fisch", "Tomaten", "Kartoffeln"]


class German(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_present", 3), ("s_perfect", 4), ("s_future", 2), ("s_intransitive", 2), ("s_negative", 1),
        ("s_because", 1), ("s_reported", 1), ("s_question", 1), ("s_number", 1), ("s_there_is", 1),
    ]  # fmt: skip

    def noun_phrase(self, noun, gender, case, adjs, definite=None):
        if definite is None:
            definite = self.rng.random() < 0.6
        kind = "def" if definite else "indef"
        article = (DEFINITE if definite else INDEFINITE)[case][gender]
        if adjs and self.rng.random() < 0.4:
            adj = self.pick(adjs)
            # "hoch" loses its c when declined; "müde" does not double its e.
            stem = "hoh" if adj == "hoch" else adj
            ending = ENDINGS[(kind, case)][gender]
            if stem.endswith("e"):
                ending = ending[1:]
            return f"{article} {stem}{ending} {noun}"
        return f"{article} {noun}"

    def subject(self):
        if self.rng.random() < 0.4:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun
            self.mentioned = True
            return self.name
        noun, gender = self.pick(PEOPLE)
        return self.noun_phrase(noun, gender, "nom", PERSON_ADJ, definite=True)

    def obj(self, data, definite=None):
        noun, gender = self.pick(data["objects"])
        return self.noun_phrase(noun, gender, "acc", data["adjs"], definite)

    def s_present(self):
        data = self.category_data()
        verb = self.pick(data["verbs"])[0]
        subj, obj, place = self.subject(), self.obj(data), self.pick(PLACES)
        if self.rng.random() < 0.4:
            return f"{cap(self.pick(TIMES['present']))} {verb} {subj} {obj} {place}."
        return f"{cap(subj)} {verb} {obj} {place}."

    def s_perfect(self):
        data = self.category_data()
        participle = self.pick(data["verbs"])[1]
        subj, obj, time = self.subject(), self.obj(data), self.pick(TIMES["past"])
        place = self.pick(PLACES) + " " if self.rng.random() < 0.5 else ""
        if self.rng.random() < 0.4:
            return f"{cap(time)} hat {subj} {obj} {place}{participle}."
        return f"{cap(subj)} hat {time} {place}{obj} {participle}."

    def s_future(self):
        data = self.category_data()
        infinitive = self.pick(data["verbs"])[2]
        return f"{cap(self.subject())} wird {self.pick(TIMES['future'])} {self.obj(data)} {infinitive}."

    def s_intransitive(self):
        present, participle = self.pick(INTRANSITIVE)
        subj = self.subject()
        if self.rng.random() < 0.5:
            return f"{cap(subj)} {present} {self.pick(MANNERS)} {self.pick(PLACES)}."
        return f"{cap(subj)} hat {self.pick(PLACES)} {self.pick(MANNERS)} {participle}."

    def s_negative(self):
        data = self.category_data()
        participle = self.pick(data["verbs"])[1]
        return f"{cap(self.subject())} hat {self.obj(data, definite=True)} nicht {participle}."

    def s_because(self):
        data = self.category_data()
        participle = self.pick(data["verbs"])[1]
        return f"{cap(self.subject())} hat {self.obj(data)} {participle}, {self.pick(REASONS)}."

    def s_reported(self):
        data = self.category_data()
        participle = self.pick(data["verbs"])[1]
        name = self.pick(NAMES)[0]
        verb = self.pick(["sagt", "meint", "erzählt", "glaubt"])
        return f"{name} {verb}, dass {self.subject()} {self.obj(data)} {self.pick(PLACES)} {participle} hat."

    def s_question(self):
        data = self.category_data()
        present, participle, infinitive = self.pick(data["verbs"])
        r = self.rng.random()
        if r < 0.35:
            return f"Hat {self.subject()} {self.obj(data)} {self.pick(TIMES['past'])} {participle}?"
        if r < 0.7:
            return f"Warum {present} {self.subject()} {self.obj(data)} {self.pick(PLACES)}?"
        return f"Wann wird {self.subject()} {self.obj(data)} {infinitive}?"

    def s_number(self):
        r = self.rng.random()
        if r < 0.35:
            noun = self.pick(["Die Brücke", "Die Mauer", "Der Turm", "Der Zaun"])
            return f"{noun} ist {self.rng.randint(3, 480)} Meter lang."
        if r < 0.7:
            return f"Im Jahr {self.rng.randint(1850, 2024)} hatte die Stadt {self.rng.randint(800, 250000)} Einwohner."
        price = f"{self.rng.randint(1, 19)},{self.rng.randint(0, 99):02d}"
        return f"Ein Kilo {self.pick(PRICED)} kostet auf dem Markt {price} Euro."

    def s_there_is(self):
        data = self.category_data()
        return f"Es gibt {self.obj(data, definite=False)} {self.pick(PLACES)}."


paragraph = German.generate
