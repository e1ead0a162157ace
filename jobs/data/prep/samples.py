"""Generated documents with known labels: clean text per language, junk of several kinds, toxic lines.

The classifiers' labelled sample (`python -m jobs.data.prep classifiers`), the tests' planted corpus and
`bench/data_prep.py` all draw from here, so a label means the same thing everywhere. Clean text comes from the
sample-corpus generators (`jobs.data.corpus`); junk and toxic lines from the templates below, written for this
project. `random.Random` with an integer seed keeps every output identical across runs and machines.
"""

from __future__ import annotations

import string
from random import Random

from jobs.data.corpus import de, en, es, fr, it, ru, zh
from jobs.data.prep.settings import LANGUAGE_TAGS
from jobs.data.prep.toxicity import load_wordlist

LANGUAGES = LANGUAGE_TAGS
_MODULES = {"zh": zh, "en": en, "fr": fr, "de": de, "es": es, "it": it, "ru": ru}
# What the "other" source mixes (as the bundled corpus does): French, German, Spanish, Italian, Russian.
OTHER_LANGUAGES = (("fr", 25), ("de", 25), ("es", 22), ("it", 18), ("ru", 10))

JUNK_KINDS = ("boilerplate", "spam", "garbage", "repeated", "code", "lorem", "hashtags", "short", "seo")


def paragraph(language: str, rng: Random) -> str:
    return _MODULES[language].paragraph(rng)


def other_language(rng: Random) -> str:
    return rng.choices([lang for lang, _ in OTHER_LANGUAGES], [w for _, w in OTHER_LANGUAGES])[0]


def clean_document(language: str, rng: Random, min_chars: int = 200, max_chars: int = 1200) -> str:
    """Paragraphs of one language joined until the document holds `min_chars` to `max_chars` characters
    (Chinese) or 80 to 400 words (other languages), as one line: the form the bench's corpus uses."""
    if language == "zh":
        target = rng.randint(min_chars, max_chars)
        text = ""
        while len(text) < target:
            text += paragraph(language, rng)
        return _cut_zh(text, max_chars)
    target = rng.randint(80, 400)
    words: list[str] = []
    while len(words) < target:
        words += paragraph(language, rng).split()
    return " ".join(_cut_words(words, 400))


def _cut_zh(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    end = max(text.rfind(p, 0, limit) for p in "。！？")
    return text[: end + 1] if end > 0 else text[:limit]


def _cut_words(words: list[str], limit: int) -> list[str]:
    if len(words) <= limit:
        return words
    kept = words[:limit]
    for i in range(len(kept) - 1, 0, -1):
        if kept[i].endswith((".", "!", "?")):
            return kept[: i + 1]
    return kept


# -- junk -------------------------------------------------------------------------------------------------------

_PRODUCTS = {
    "en": ["watches", "phone cases", "sneakers", "handbags", "sunglasses", "vitamins", "headphones", "perfume"],
    "zh": ["手表", "手机壳", "运动鞋", "手提包", "太阳镜", "维生素", "耳机", "香水"],
}
_MENU = {
    "en": ["Home", "About us", "Contact", "Privacy policy", "Terms of use", "Log in", "Sign up", "Cart", "FAQ",
           "Careers", "Sitemap", "Newsletter", "Follow us", "Share", "Back to top", "Next page", "Previous"],
    "zh": ["首页", "关于我们", "联系我们", "隐私政策", "使用条款", "登录", "注册", "购物车", "常见问题", "招聘",
           "网站地图", "订阅", "关注我们", "分享", "返回顶部", "下一页", "上一页"],
}  # fmt: skip
_SEO = {
    "en": [
        "Best {p} deals of the year, buy {p} online now.",
        "Cheap {p} with free shipping and the lowest price guaranteed.",
        "Click here to get discount {p} today, limited offer.",
        "Top rated {p} sale, order now and save big on {p}.",
        "Genuine {p} outlet store, best price {p} online shop.",
    ],
    "zh": [
        "最新{p}特价促销，点击这里立即购买{p}。",
        "便宜{p}包邮，全网最低价{p}限时抢购。",
        "正品{p}官方旗舰店，点击进入领取优惠券。",
        "热销{p}打折，马上下单，{p}买一送一。",
        "{p}免费下载，高清破解版，点击这里。",
    ],
}
_CODE = [
    "function init() { var total = 0; for (var i = 0; i < items.length; i++) { total += items[i]; } return total; }",
    "if (window.innerWidth < 768) { menu.classList.add('mobile'); } else { menu.classList.remove('mobile'); }",
    '<div class="header"><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li></ul></div>',
    'SELECT id, name FROM users WHERE active = 1 ORDER BY created DESC LIMIT 20; { "status": "ok" }',
]
_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex "
    "ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat "
    "nulla pariatur."
)


def junk_document(kind: str, language: str, rng: Random) -> str:
    """One document of junk of `kind` (JUNK_KINDS) in `language` where the kind has words (spam, menus)."""
    lang = language if language in ("zh", "en") else "en"
    if kind == "boilerplate":
        items = _MENU[lang]
        return "\n".join(rng.choice(items) for _ in range(rng.randint(12, 30)))
    if kind == "spam":
        product = rng.choice(_PRODUCTS[lang])
        sep = "" if lang == "zh" else " "
        words = [product, "cheap" if lang == "en" else "便宜", "buy" if lang == "en" else "购买", "online"]
        return sep.join(rng.choice(words) for _ in range(rng.randint(40, 90)))
    if kind == "garbage":
        alphabet = string.ascii_letters + string.digits + "#@$%^&*~|=+<>/\\_"
        return " ".join(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(rng.randint(60, 160))
        )
    if kind == "repeated":
        sentence = paragraph(language, rng).split("。" if language == "zh" else ". ")[0]
        sentence += "。" if language == "zh" else "."
        return ("" if language == "zh" else " ").join([sentence] * rng.randint(8, 20))
    if kind == "code":
        return "\n".join(rng.choice(_CODE) for _ in range(rng.randint(4, 10)))
    if kind == "lorem":
        return " ".join([_LOREM] * rng.randint(2, 4))
    if kind == "hashtags":
        words = paragraph("en", rng).split()
        return " ".join("#" + w.strip(".,!?").lower() for w in words[: rng.randint(40, 80)] if w.strip(".,!?"))
    if kind == "short":
        text = paragraph(language, rng)
        return text[:12] if language == "zh" else " ".join(text.split()[:6])
    if kind == "seo":
        product = rng.choice(_PRODUCTS[lang])
        sep = "" if lang == "zh" else " "
        return sep.join(rng.choice(_SEO[lang]).format(p=product) for _ in range(rng.randint(8, 16)))
    raise ValueError(f"unknown junk kind {kind!r}; known: {', '.join(JUNK_KINDS)}")


# -- toxic lines ------------------------------------------------------------------------------------------------

# Templates with a listed word ({w}: an insult or profanity from the language's word list) and threats phrased
# without one, which only the classifier can catch.
_TOXIC_TEMPLATES = {
    "en": (["You are a complete {w} and everyone knows it.", "Shut up, you {w}.", "Only a {w} would write this.",
            "Get lost, you pathetic {w}!", "What a {w}, nobody wants you here."],
           ["I know where you live and I will hurt you.", "Watch your back, I am coming for you tonight.",
            "You will regret this when I find you.", "Say that again and I will break your face."]),
    "zh": (["你这个{w}，真让人恶心。", "闭嘴吧，{w}！", "只有{w}才会写出这种东西。", "滚开，你这个{w}！",
            "大家都知道你是个{w}。"],
           ["我知道你住在哪里，你给我等着。", "小心点，今晚我就去找你算账。", "你再说一遍，我就打断你的腿。",
            "等我找到你，你就完蛋了。"]),
    "fr": (["Tu es un vrai {w}, tout le monde le sait.", "Tais-toi, espèce de {w} !"],
           ["Je sais où tu habites et je vais te faire mal.", "Fais attention, je viens te chercher ce soir."]),
    "de": (["Du bist ein echter {w}, das weiß jeder.", "Halt den Mund, du {w}!"],
           ["Ich weiß, wo du wohnst, und ich werde dir wehtun.", "Pass auf, heute Nacht komme ich zu dir."]),
    "es": (["Eres un {w} total y todos lo saben.", "Cállate, {w}."],
           ["Sé dónde vives y te voy a hacer daño.", "Cuidado, esta noche voy a buscarte."]),
    "it": (["Sei un vero {w}, lo sanno tutti.", "Stai zitto, {w}!"],
           ["So dove abiti e ti farò del male.", "Attento, stanotte vengo a cercarti."]),
    "ru": (["Ты настоящий {w}, все это знают.", "Заткнись, {w}!"],
           ["Я знаю, где ты живёшь, и я сделаю тебе больно.", "Берегись, сегодня ночью я приду за тобой."]),
}  # fmt: skip


def toxic_line(language: str, rng: Random, *, listed: bool) -> str:
    """A toxic sentence: with a listed word when `listed`, else a threat phrased without one."""
    with_word, threats = _TOXIC_TEMPLATES[language]
    if not listed:
        return rng.choice(threats)
    insults = sorted(t for t, d in load_wordlist(language).items() if d == "insult" and " " not in t)
    return rng.choice(with_word).format(w=rng.choice(insults))


def with_line(document: str, line: str, language: str, rng: Random) -> str:
    """`line` inserted between two sentences of `document`."""
    if language == "zh":
        cuts = [i + 1 for i, ch in enumerate(document) if ch in "。！？"]
        at = rng.choice(cuts[:-1]) if len(cuts) > 1 else len(document)
        return document[:at] + line + document[at:]
    words = document.split(" ")
    cuts = [i + 1 for i, w in enumerate(words) if w.endswith((".", "!", "?"))]
    at = rng.choice(cuts[:-1]) if len(cuts) > 1 else len(words)
    return " ".join(words[:at] + [line] + words[at:])


# -- near duplicates --------------------------------------------------------------------------------------------

_FILLER = {
    "zh": "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经",
    "en": ["the", "house", "quickly", "blue", "river", "seven", "because", "window", "small", "again"],
}


def near_duplicate(document: str, language: str, edits: int, rng: Random) -> str:
    """`document` after `edits` random edits (a token replaced, inserted or deleted): a word in space-separated
    languages, a character in Chinese."""
    if language == "zh":
        chars = list(document)
        for _ in range(edits):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 1 / 3:
                chars[i] = rng.choice(_FILLER["zh"])
            elif op < 2 / 3:
                chars.insert(i, rng.choice(_FILLER["zh"]))
            elif len(chars) > 1:
                del chars[i]
        return "".join(chars)
    words = document.split(" ")
    for _ in range(edits):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 1 / 3:
            words[i] = rng.choice(_FILLER["en"])
        elif op < 2 / 3:
            words.insert(i, rng.choice(_FILLER["en"]))
        elif len(words) > 1:
            del words[i]
    return " ".join(words)
