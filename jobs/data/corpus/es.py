"""Spanish paragraphs built from templates and word lists written for this project."""

from .base import Paragraph, cap

PEOPLE = [
    ("profesor", "m"), ("profesora", "f"), ("ingeniera", "f"), ("médico", "m"), ("enfermera", "f"),
    ("pintor", "m"), ("panadero", "m"), ("conductora", "f"), ("jardinero", "m"), ("piloto", "m"),
    ("cocinera", "f"), ("periodista", "f"), ("arquitecto", "m"), ("mecánico", "m"), ("abuela", "f"),
    ("niño", "m"), ("niña", "f"), ("alcaldesa", "f"), ("señor", "m"), ("fotógrafa", "f"),
]  # fmt: skip
NAMES = [("Lucía", "ella"), ("Mateo", "él"), ("Carmen", "ella"), ("Javier", "él"), ("Sofía", "ella"),
         ("Andrés", "él"), ("Valeria", "ella"), ("Martín", "él"), ("Inés", "ella"), ("Tomás", "él")]  # fmt: skip
PERSON_ADJ = [("cansado", "cansada"), ("curioso", "curiosa"), ("paciente", "paciente"), ("famoso", "famosa"),
              ("contento", "contenta"), ("nuevo", "nueva"), ("tranquilo", "tranquila")]  # fmt: skip

# Verbs are (present 3sg, preterite 3sg, infinitive).
CATEGORIES = {
    "food": {
        "objects": [("pan", "m"), ("sopa", "f"), ("pastel", "m"), ("ensalada", "f"), ("manzana", "f"),
                    ("queso", "m"), ("pescado", "m"), ("tortilla", "f"), ("arroz", "m"), ("naranja", "f")],
        "adjs": [("delicioso", "deliciosa"), ("caliente", "caliente"), ("fresco", "fresca"), ("dulce", "dulce")],
        "verbs": [("come", "comió", "comer"), ("compra", "compró", "comprar"), ("prepara", "preparó", "preparar"),
                  ("vende", "vendió", "vender"), ("prueba", "probó", "probar"), ("comparte", "compartió", "compartir")],
    },
    "drinks": {
        "objects": [("té", "m"), ("café", "m"), ("leche", "f"), ("zumo", "m"), ("limonada", "f"), ("chocolate", "m")],
        "adjs": [("caliente", "caliente"), ("frío", "fría"), ("dulce", "dulce"), ("amargo", "amarga")],
        "verbs": [("bebe", "bebió", "beber"), ("compra", "compró", "comprar"), ("prepara", "preparó", "preparar"),
                  ("sirve", "sirvió", "servir"), ("pide", "pidió", "pedir")],
    },
    "docs": {
        "objects": [("carta", "f"), ("informe", "m"), ("libro", "m"), ("poema", "m"), ("artículo", "m"),
                    ("mapa", "m"), ("receta", "f"), ("historia", "f"), ("contrato", "m"), ("cuaderno", "m")],
        "adjs": [("largo", "larga"), ("detallado", "detallada"), ("antiguo", "antigua"), ("importante", "importante")],
        "verbs": [("lee", "leyó", "leer"), ("escribe", "escribió", "escribir"), ("traduce", "tradujo", "traducir"),
                  ("imprime", "imprimió", "imprimir"), ("firma", "firmó", "firmar"), ("envía", "envió", "enviar")],
    },
    "structures": {
        "objects": [("puente", "m"), ("casa", "f"), ("muro", "m"), ("jardín", "m"), ("biblioteca", "f"),
                    ("torre", "f"), ("escuela", "f"), ("carretera", "f"), ("barco", "m"), ("museo", "m"),
                    ("estación", "f")],
        "adjs": [("antiguo", "antigua"), ("moderno", "moderna"), ("estrecho", "estrecha"), ("famoso", "famosa")],
        "verbs": [("construye", "construyó", "construir"), ("repara", "reparó", "reparar"),
                  ("pinta", "pintó", "pintar"), ("visita", "visitó", "visitar"), ("limpia", "limpió", "limpiar"),
                  ("diseña", "diseñó", "diseñar"), ("fotografía", "fotografió", "fotografiar")],
    },
    "machines": {
        "objects": [("motor", "m"), ("ordenador", "m"), ("bicicleta", "f"), ("impresora", "f"), ("radio", "f"),
                    ("reloj", "m"), ("cámara", "f"), ("tractor", "m"), ("servidor", "m"), ("robot", "m"),
                    ("bomba", "f"), ("lámpara", "f")],
        "adjs": [("ruidoso", "ruidosa"), ("pesado", "pesada"), ("roto", "rota"), ("nuevo", "nueva")],
        "verbs": [("repara", "reparó", "reparar"), ("prueba", "probó", "probar"), ("revisa", "revisó", "revisar"),
                  ("limpia", "limpió", "limpiar"), ("lleva", "llevó", "llevar"), ("instala", "instaló", "instalar")],
    },
}  # fmt: skip
INTRANSITIVE = [("duerme", "durmió"), ("trabaja", "trabajó"), ("canta", "cantó"), ("espera", "esperó"),
                ("camina", "caminó"), ("estudia", "estudió"), ("baila", "bailó"), ("descansa", "descansó")]  # fmt: skip
PLACES = [
    "en la cocina", "en el mercado", "cerca del río", "en el casco antiguo", "detrás de la estación",
    "en la colina", "en la biblioteca", "en el puerto", "en el taller", "junto al lago", "en un pueblo pequeño",
    "en la universidad", "en el tren", "en el jardín", "en la oficina",
]  # fmt: skip
TIMES = {
    "past": ["ayer", "la semana pasada", "esta mañana", "hace dos días", "el lunes", "después de comer",
             "el invierno pasado", "anoche"],
    "present": ["cada mañana", "los fines de semana", "todos los días", "por la tarde", "a menudo"],
    "future": ["mañana", "la semana que viene", "el viernes", "pronto", "el mes próximo"],
}  # fmt: skip
MANNERS = ["despacio", "rápidamente", "con cuidado", "en silencio", "tranquilamente", "juntos", "sin prisa"]
REASONS = [
    "llovía", "hacía frío", "la tienda estaba cerrada", "la carretera estaba cortada", "todos tenían hambre",
    "el tren llegó tarde", "hacía muy buen tiempo",
]  # fmt: skip
PRICED = ["manzanas", "queso", "pescado", "arroz", "tomates", "naranjas"]


class Spanish(Paragraph):
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
        noun, gender = self.pick(PEOPLE)
        phrase = ("el " if gender == "m" else "la ") + noun
        if self.rng.random() < 0.4:
            phrase += " " + self.pick(PERSON_ADJ)[0 if gender == "m" else 1]
        return phrase

    def obj(self, data, definite=None):
        noun, gender = self.pick(data["objects"])
        if definite is None:
            definite = self.rng.random() < 0.6
        if definite:
            phrase = ("el " if gender == "m" else "la ") + noun
        else:
            phrase = ("un " if gender == "m" else "una ") + noun
        if self.rng.random() < 0.4:
            phrase += " " + self.pick(data["adjs"])[0 if gender == "m" else 1]
        return phrase

    def clause(self, tense=None, with_time=True, negative=False):
        data = self.category_data()
        tense = tense or self.pick(["present", "past", "past", "future"])
        present, preterite, infinitive = self.pick(data["verbs"])
        verb = {"present": present, "past": preterite, "future": "va a " + infinitive}[tense]
        if negative:
            verb = "no " + verb
        parts = [self.subject(), verb, self.obj(data)]
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
        present, preterite = self.pick(INTRANSITIVE)
        verb = present if self.rng.random() < 0.5 else preterite
        return f"{cap(self.subject())} {verb} {self.pick(MANNERS)} {self.pick(PLACES)}."

    def s_negative(self):
        return f"{cap(self.clause('past', negative=True))}, pero {self.clause('past', with_time=False)}."

    def s_because(self):
        return f"{cap(self.clause('past'))} porque {self.pick(REASONS)}."

    def s_quote(self):
        verb = self.pick(["dijo", "respondió", "explicó", "añadió"])
        return f"—{cap(self.clause('future'))} —{verb} {self.pick(NAMES)[0]}."

    def s_question(self):
        r = self.rng.random()
        if r < 0.4:
            return f"¿{cap(self.clause('past'))}?"
        if r < 0.7:
            return f"¿Por qué {self.clause('present', with_time=False)}?"
        return f"¡Qué sorpresa! {cap(self.clause('past'))}."

    def s_number(self):
        r = self.rng.random()
        if r < 0.35:
            noun = self.pick(["El puente", "El muro", "El barco", "El jardín"])
            return f"{noun} mide {self.rng.randint(3, 480)} metros de largo."
        if r < 0.7:
            return f"En {self.rng.randint(1850, 2024)}, la ciudad tenía {self.rng.randint(800, 250000)} habitantes."
        price = f"{self.rng.randint(1, 19)},{self.rng.randint(0, 99):02d}"
        return f"Un kilo de {self.pick(PRICED)} cuesta {price} euros en el mercado."

    def s_there_is(self):
        return f"Hay {self.obj(self.category_data(), definite=False)} {self.pick(PLACES)}."


paragraph = Spanish.generate
