"""French paragraphs built from templates and word lists written for this project."""

from .base import Paragraph, cap

# Nouns are (word, gender); a leading vowel or mute h takes the elided article l'.
PEOPLE = [
    ("professeur", "m"), ("étudiante", "f"), ("ingénieur", "m"), ("médecin", "m"), ("infirmière", "f"),
    ("peintre", "m"), ("musicienne", "f"), ("écrivain", "m"), ("jardinier", "m"), ("boulangère", "f"),
    ("cuisinier", "m"), ("journaliste", "f"), ("architecte", "m"), ("mécanicien", "m"), ("photographe", "f"),
    ("chercheuse", "f"), ("voisin", "m"), ("grand-mère", "f"), ("maire", "m"), ("pilote", "f"),
]  # fmt: skip
NAMES = [
    ("Claire", "elle"), ("Julien", "il"), ("Sophie", "elle"), ("Lucas", "il"), ("Camille", "elle"),
    ("Antoine", "il"), ("Élise", "elle"), ("Hugo", "il"), ("Margaux", "elle"), ("Théo", "il"),
    ("Noémie", "elle"), ("François", "il"),
]  # fmt: skip
PERSON_ADJ = [("fatigué", "fatiguée"), ("curieux", "curieuse"), ("patient", "patiente"), ("célèbre", "célèbre"),
              ("content", "contente"), ("pressé", "pressée"), ("attentif", "attentive"), ("sérieux", "sérieuse")]  # fmt: skip

# Verbs are (present 3sg, past participle with avoir, infinitive).
CATEGORIES = {
    "food": {
        "objects": [("pain", "m"), ("soupe", "f"), ("gâteau", "m"), ("salade", "f"), ("pomme", "f"),
                    ("fromage", "m"), ("tarte", "f"), ("poisson", "m"), ("omelette", "f"), ("crêpe", "f")],
        "adjs": [("délicieux", "délicieuse"), ("chaud", "chaude"), ("frais", "fraîche"), ("sucré", "sucrée")],
        "verbs": [("mange", "mangé", "manger"), ("achète", "acheté", "acheter"), ("prépare", "préparé", "préparer"),
                  ("vend", "vendu", "vendre"), ("goûte", "goûté", "goûter"), ("partage", "partagé", "partager")],
    },
    "drinks": {
        "objects": [("thé", "m"), ("café", "m"), ("lait", "m"), ("jus", "m"), ("limonade", "f"), ("soupe", "f")],
        "adjs": [("chaud", "chaude"), ("froid", "froide"), ("sucré", "sucrée"), ("amer", "amère")],
        "verbs": [("boit", "bu", "boire"), ("achète", "acheté", "acheter"), ("prépare", "préparé", "préparer"),
                  ("sert", "servi", "servir"), ("verse", "versé", "verser")],
    },
    "docs": {
        "objects": [("lettre", "f"), ("rapport", "m"), ("livre", "m"), ("poème", "m"), ("article", "m"),
                    ("carte", "f"), ("recette", "f"), ("histoire", "f"), ("contrat", "m"), ("cahier", "m")],
        "adjs": [("long", "longue"), ("détaillé", "détaillée"), ("ancien", "ancienne"), ("important", "importante")],
        "verbs": [("lit", "lu", "lire"), ("écrit", "écrit", "écrire"), ("traduit", "traduit", "traduire"),
                  ("imprime", "imprimé", "imprimer"), ("signe", "signé", "signer"), ("envoie", "envoyé", "envoyer")],
    },
    "structures": {
        "objects": [("pont", "m"), ("maison", "f"), ("mur", "m"), ("jardin", "m"), ("bibliothèque", "f"),
                    ("tour", "f"), ("école", "f"), ("route", "f"), ("bateau", "m"), ("musée", "m"), ("gare", "f")],
        "adjs": [("ancien", "ancienne"), ("moderne", "moderne"), ("étroit", "étroite"), ("célèbre", "célèbre")],
        "verbs": [("construit", "construit", "construire"), ("répare", "réparé", "réparer"),
                  ("peint", "peint", "peindre"), ("visite", "visité", "visiter"), ("nettoie", "nettoyé", "nettoyer"),
                  ("dessine", "dessiné", "dessiner"), ("photographie", "photographié", "photographier")],
    },
    "machines": {
        "objects": [("moteur", "m"), ("ordinateur", "m"), ("vélo", "m"), ("imprimante", "f"), ("radio", "f"),
                    ("horloge", "f"), ("caméra", "f"), ("tracteur", "m"), ("serveur", "m"), ("robot", "m"),
                    ("pompe", "f"), ("lampe", "f")],
        "adjs": [("bruyant", "bruyante"), ("lourd", "lourde"), ("cassé", "cassée"), ("neuf", "neuve")],
        "verbs": [("répare", "réparé", "réparer"), ("teste", "testé", "tester"), ("démarre", "démarré", "démarrer"),
                  ("vérifie", "vérifié", "vérifier"), ("installe", "installé", "installer"),
                  ("transporte", "transporté", "transporter")],
    },
}  # fmt: skip
INTRANSITIVE = [("dort", "dormi"), ("travaille", "travaillé"), ("chante", "chanté"), ("attend", "attendu"),
                ("marche", "marché"), ("rit", "ri"), ("étudie", "étudié"), ("danse", "dansé")]  # fmt: skip
PLACES = [
    "dans la cuisine", "au marché", "près de la rivière", "dans la vieille ville", "derrière la gare",
    "sur la colline", "à la bibliothèque", "au port", "dans l'atelier", "au bord du lac",
    "dans un petit village", "à l'université", "dans le train", "dans le jardin", "au bureau",
]  # fmt: skip
TIMES = {
    "past": ["hier", "la semaine dernière", "ce matin", "il y a deux jours", "lundi", "après le déjeuner",
             "l'hiver dernier", "hier soir"],
    "present": ["chaque matin", "le week-end", "tous les jours", "le soir", "souvent"],
    "future": ["demain", "la semaine prochaine", "vendredi", "bientôt", "le mois prochain"],
}  # fmt: skip
MANNERS = ["lentement", "vite", "avec soin", "en silence", "tranquillement", "ensemble", "sans bruit"]
REASONS = [
    "il pleuvait", "il faisait froid", "le magasin était fermé", "la route était bloquée",
    "tout le monde avait faim", "le train était en retard", "il faisait très beau",
]  # fmt: skip
PRICED = ["pommes", "fromage", "poisson", "riz", "tomates", "cerises"]


def _starts_with_vowel(word):
    return word[0] in "aeiouéèêhâîô"


def _definite(noun, gender):
    if _starts_with_vowel(noun):
        return "l'" + noun
    return ("le " if gender == "m" else "la ") + noun


class French(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_statement", 6), ("s_intransitive", 2), ("s_negative", 1), ("s_because", 2), ("s_quote", 1),
        ("s_question", 1), ("s_number", 1), ("s_there_is", 1),
    ]  # fmt: skip

    def subject(self):
        return self.subject_and_pronoun()[0]

    def subject_and_pronoun(self):
        if self.rng.random() < 0.4:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun, self.pronoun
            self.mentioned = True
            return self.name, self.pronoun
        noun, gender = self.pick(PEOPLE)
        phrase = _definite(noun, gender)
        if self.rng.random() < 0.4:
            phrase += " " + self.pick(PERSON_ADJ)[0 if gender == "m" else 1]
        return phrase, "il" if gender == "m" else "elle"

    def obj(self, data, definite_only=False):
        noun, gender = self.pick(data["objects"])
        if definite_only or self.rng.random() < 0.6:
            phrase = _definite(noun, gender)
        else:
            phrase = ("un " if gender == "m" else "une ") + noun
        if self.rng.random() < 0.4:
            phrase += " " + self.pick(data["adjs"])[0 if gender == "m" else 1]
        return phrase

    def verb(self, forms, tense):
        present, participle, infinitive = forms
        return {"present": present, "past": "a " + participle, "future": "va " + infinitive}[tense]

    def clause(self, tense=None, with_time=True):
        data = self.category_data()
        tense = tense or self.pick(["present", "past", "past", "future"])
        parts = [self.subject(), self.verb(self.pick(data["verbs"]), tense), self.obj(data)]
        if self.rng.random() < 0.5:
            parts.append(self.pick(PLACES))
        if with_time and self.rng.random() < 0.5:
            parts.append(self.pick(TIMES[tense]))
        return " ".join(parts)

    def s_statement(self):
        if self.rng.random() < 0.3:
            tense = self.pick(["present", "past", "future"])
            return f"{cap(self.pick(TIMES[tense]))}, {self.clause(tense, with_time=False)}."
        return cap(self.clause()) + "."

    def s_intransitive(self):
        present, participle = self.pick(INTRANSITIVE)
        verb = present if self.rng.random() < 0.5 else "a " + participle
        return f"{cap(self.subject())} {verb} {self.pick(MANNERS)} {self.pick(PLACES)}."

    def s_negative(self):
        data = self.category_data()
        subj, pron = self.subject_and_pronoun()
        first, second = self.pick(data["verbs"]), self.pick(data["verbs"])
        return (
            f"{cap(subj)} n'a pas {first[1]} {self.obj(data, True)} {self.pick(TIMES['past'])}, "
            f"mais {pron} a {second[1]} {self.obj(data)}."
        )

    def s_because(self):
        reason = self.pick(REASONS)
        conj = "parce qu'" if _starts_with_vowel(reason) else "parce que "
        return f"{cap(self.clause('past'))} {conj}{reason}."

    def s_quote(self):
        verb = self.pick(["a dit", "a répondu", "a expliqué", "a ajouté"])
        return f"« {cap(self.clause('future'))} », {verb} {self.pick(NAMES)[0]}."

    def s_question(self):
        data = self.category_data()
        if self.rng.random() < 0.5:
            forms = self.pick(data["verbs"])
            return f"Est-ce que {self.subject()} a {forms[1]} {self.obj(data)} {self.pick(TIMES['past'])} ?"
        return f"Pourquoi est-ce que {self.clause('present', with_time=False)} ?"

    def s_number(self):
        r = self.rng.random()
        if r < 0.35:
            noun = self.pick(["pont", "mur", "bateau", "jardin"])
            return f"Le {noun} mesure {self.rng.randint(3, 480)} mètres de long."
        if r < 0.7:
            return f"En {self.rng.randint(1850, 2024)}, la ville comptait {self.rng.randint(800, 250000)} habitants."
        price = f"{self.rng.randint(1, 19)},{self.rng.randint(0, 99):02d}"
        return f"Un kilo de {self.pick(PRICED)} coûte {price} euros au marché."

    def s_there_is(self):
        data = self.category_data()
        noun, gender = self.pick(data["objects"])
        adj = self.pick(data["adjs"])[0 if gender == "m" else 1]
        article = "un" if gender == "m" else "une"
        return f"Il y a {article} {noun} {adj} {self.pick(PLACES)}."


paragraph = French.generate
