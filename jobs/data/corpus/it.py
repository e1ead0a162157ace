"""Italian paragraphs built from templates and word lists written for this project."""

from .base import Paragraph, cap

# Nouns are (definite form, indefinite form, gender): Italian articles depend on the sound, so both are listed.
PEOPLE = [
    ("il professore", "un professore", "m"), ("la studentessa", "una studentessa", "f"),
    ("l'ingegnere", "un ingegnere", "m"), ("il medico", "un medico", "m"), ("l'infermiera", "un'infermiera", "f"),
    ("il pittore", "un pittore", "m"), ("la cuoca", "una cuoca", "f"), ("il giardiniere", "un giardiniere", "m"),
    ("la giornalista", "una giornalista", "f"), ("l'architetto", "un architetto", "m"),
    ("il meccanico", "un meccanico", "m"), ("la nonna", "una nonna", "f"), ("lo scrittore", "uno scrittore", "m"),
    ("la sindaca", "una sindaca", "f"), ("il fornaio", "un fornaio", "m"), ("la fotografa", "una fotografa", "f"),
]  # fmt: skip
NAMES = [("Giulia", "lei"), ("Marco", "lui"), ("Chiara", "lei"), ("Luca", "lui"), ("Francesca", "lei"),
         ("Niccolò", "lui"), ("Beatrice", "lei"), ("Matteo", "lui"), ("Elena", "lei"), ("Davide", "lui")]  # fmt: skip
PERSON_ADJ = [("stanco", "stanca"), ("curioso", "curiosa"), ("paziente", "paziente"), ("famoso", "famosa"),
              ("contento", "contenta"), ("tranquillo", "tranquilla")]  # fmt: skip

# Verbs are (present 3sg, passato prossimo 3sg, future 3sg).
CATEGORIES = {
    "food": {
        "objects": [("il pane", "un pane", "m"), ("la zuppa", "una zuppa", "f"), ("la torta", "una torta", "f"),
                    ("l'insalata", "un'insalata", "f"), ("la mela", "una mela", "f"),
                    ("il formaggio", "un formaggio", "m"), ("il pesce", "un pesce", "m"),
                    ("la pizza", "una pizza", "f"), ("il risotto", "un risotto", "m")],
        "adjs": [("delizioso", "deliziosa"), ("caldo", "calda"), ("fresco", "fresca"), ("dolce", "dolce")],
        "verbs": [("mangia", "ha mangiato", "mangerà"), ("compra", "ha comprato", "comprerà"),
                  ("prepara", "ha preparato", "preparerà"), ("vende", "ha venduto", "venderà"),
                  ("assaggia", "ha assaggiato", "assaggerà"), ("cucina", "ha cucinato", "cucinerà")],
    },
    "drinks": {
        "objects": [("il tè", "un tè", "m"), ("il caffè", "un caffè", "m"), ("il latte", "un latte", "m"),
                    ("il succo", "un succo", "m"), ("la limonata", "una limonata", "f")],
        "adjs": [("caldo", "calda"), ("freddo", "fredda"), ("dolce", "dolce"), ("amaro", "amara")],
        "verbs": [("beve", "ha bevuto", "berrà"), ("compra", "ha comprato", "comprerà"),
                  ("prepara", "ha preparato", "preparerà"), ("ordina", "ha ordinato", "ordinerà")],
    },
    "docs": {
        "objects": [("la lettera", "una lettera", "f"), ("il rapporto", "un rapporto", "m"),
                    ("il libro", "un libro", "m"), ("la poesia", "una poesia", "f"),
                    ("l'articolo", "un articolo", "m"), ("la mappa", "una mappa", "f"),
                    ("la ricetta", "una ricetta", "f"), ("il contratto", "un contratto", "m"),
                    ("il quaderno", "un quaderno", "m")],
        "adjs": [("lungo", "lunga"), ("dettagliato", "dettagliata"), ("antico", "antica"), ("nuovo", "nuova")],
        "verbs": [("legge", "ha letto", "leggerà"), ("scrive", "ha scritto", "scriverà"),
                  ("traduce", "ha tradotto", "tradurrà"), ("stampa", "ha stampato", "stamperà"),
                  ("firma", "ha firmato", "firmerà"), ("spedisce", "ha spedito", "spedirà")],
    },
    "structures": {
        "objects": [("il ponte", "un ponte", "m"), ("la casa", "una casa", "f"), ("il muro", "un muro", "m"),
                    ("il giardino", "un giardino", "m"), ("la biblioteca", "una biblioteca", "f"),
                    ("la torre", "una torre", "f"), ("la scuola", "una scuola", "f"),
                    ("la strada", "una strada", "f"), ("la barca", "una barca", "f"), ("il museo", "un museo", "m")],
        "adjs": [("antico", "antica"), ("moderno", "moderna"), ("stretto", "stretta"), ("famoso", "famosa")],
        "verbs": [("costruisce", "ha costruito", "costruirà"), ("ripara", "ha riparato", "riparerà"),
                  ("dipinge", "ha dipinto", "dipingerà"), ("visita", "ha visitato", "visiterà"),
                  ("pulisce", "ha pulito", "pulirà"), ("fotografa", "ha fotografato", "fotograferà")],
    },
    "machines": {
        "objects": [("il motore", "un motore", "m"), ("il computer", "un computer", "m"),
                    ("la bicicletta", "una bicicletta", "f"), ("la stampante", "una stampante", "f"),
                    ("la radio", "una radio", "f"), ("l'orologio", "un orologio", "m"),
                    ("la macchina fotografica", "una macchina fotografica", "f"), ("il trattore", "un trattore", "m"),
                    ("il server", "un server", "m"), ("la pompa", "una pompa", "f"), ("la lampada", "una lampada", "f")],
        "adjs": [("rumoroso", "rumorosa"), ("pesante", "pesante"), ("rotto", "rotta"), ("nuovo", "nuova")],
        "verbs": [("ripara", "ha riparato", "riparerà"), ("prova", "ha provato", "proverà"),
                  ("controlla", "ha controllato", "controllerà"), ("pulisce", "ha pulito", "pulirà"),
                  ("porta", "ha portato", "porterà"), ("installa", "ha installato", "installerà")],
    },
}  # fmt: skip
INTRANSITIVE = [("dorme", "ha dormito"), ("lavora", "ha lavorato"), ("canta", "ha cantato"),
                ("aspetta", "ha aspettato"), ("ride", "ha riso"), ("studia", "ha studiato"),
                ("balla", "ha ballato"), ("cammina", "ha camminato")]  # fmt: skip
PLACES = [
    "in cucina", "al mercato", "vicino al fiume", "nel centro storico", "dietro la stazione", "sulla collina",
    "in biblioteca", "al porto", "in officina", "sul lago", "in un piccolo paese", "all'università",
    "sul treno", "in giardino", "in ufficio",
]  # fmt: skip
TIMES = {
    "past": ["ieri", "la settimana scorsa", "stamattina", "due giorni fa", "lunedì", "dopo pranzo",
             "l'inverno scorso", "ieri sera"],
    "present": ["ogni mattina", "nel fine settimana", "tutti i giorni", "di sera", "spesso"],
    "future": ["domani", "la settimana prossima", "venerdì", "presto", "il mese prossimo"],
}  # fmt: skip
MANNERS = ["lentamente", "in fretta", "con cura", "in silenzio", "tranquillamente", "insieme", "senza parlare"]
REASONS = [
    "pioveva", "faceva freddo", "il negozio era chiuso", "la strada era bloccata", "tutti avevano fame",
    "il treno era in ritardo", "faceva bel tempo",
]  # fmt: skip
PRICED = ["mele", "formaggio", "pesce", "riso", "pomodori", "ciliegie"]


class Italian(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_statement", 6), ("s_intransitive", 2), ("s_negative", 1), ("s_because", 2), ("s_quote", 1),
        ("s_question", 1), ("s_number", 1), ("s_there_is", 1),
    ]  # fmt: skip

    def subject(self):
        if self.rng.random() < 0.4:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun
            self.mentioned = True
            return self.name
        definite, _, gender = self.pick(PEOPLE)
        if self.rng.random() < 0.4:
            return definite + " " + self.pick(PERSON_ADJ)[0 if gender == "m" else 1]
        return definite

    def obj(self, data, definite=None):
        definite_form, indefinite_form, gender = self.pick(data["objects"])
        if definite is None:
            definite = self.rng.random() < 0.6
        phrase = definite_form if definite else indefinite_form
        if self.rng.random() < 0.4:
            phrase += " " + self.pick(data["adjs"])[0 if gender == "m" else 1]
        return phrase

    def clause(self, tense=None, with_time=True, negative=False):
        data = self.category_data()
        tense = tense or self.pick(["present", "past", "past", "future"])
        present, past, future = self.pick(data["verbs"])
        verb = {"present": present, "past": past, "future": future}[tense]
        if negative:
            verb = "non " + verb
        parts = [self.subject(), verb, self.obj(data)]
        if self.rng.random() < 0.5:
            parts.append(self.pick(PLACES))
        if with_time and self.rng.random() < 0.5:
            parts.append(self.pick(TIMES[tense]))
        return " ".join(parts)

    def s_statement(self):
        if self.rng.random() < 0.3:
            tense = self.pick(["present", "past", "future"])
            return f"{cap(self.pick(TIMES[tense]))} {self.clause(tense, with_time=False)}."
        return cap(self.clause()) + "."

    def s_intransitive(self):
        present, past = self.pick(INTRANSITIVE)
        verb = present if self.rng.random() < 0.5 else past
        return f"{cap(self.subject())} {verb} {self.pick(MANNERS)} {self.pick(PLACES)}."

    def s_negative(self):
        return f"{cap(self.clause('past', negative=True))}, ma {self.clause('past', with_time=False)}."

    def s_because(self):
        return f"{cap(self.clause('past'))} perché {self.pick(REASONS)}."

    def s_quote(self):
        verb = self.pick(["ha detto", "ha risposto", "ha spiegato", "ha aggiunto"])
        return f"«{cap(self.clause('future'))}», {verb} {self.pick(NAMES)[0]}."

    def s_question(self):
        if self.rng.random() < 0.5:
            return f"{cap(self.clause('past'))}?"
        return f"Perché {self.clause('present', with_time=False)}?"

    def s_number(self):
        r = self.rng.random()
        if r < 0.35:
            noun = self.pick(["Il ponte", "Il muro", "Il giardino"])
            return f"{noun} è lungo {self.rng.randint(3, 480)} metri."
        if r < 0.7:
            return f"Nel {self.rng.randint(1850, 2024)} la città aveva {self.rng.randint(800, 250000)} abitanti."
        price = f"{self.rng.randint(1, 19)},{self.rng.randint(0, 99):02d}"
        return f"Un chilo di {self.pick(PRICED)} costa {price} euro al mercato."

    def s_there_is(self):
        return f"C'è {self.obj(self.category_data(), definite=False)} {self.pick(PLACES)}."


paragraph = Italian.generate
