"""What counts as leaked: the items an original sentence holds (person names, places, organisations by Russian NER;
numbers, dates, e-mail addresses and phone numbers by rules; content words) and which of them reappear in its
reconstruction; figures over rows with 95% bootstrap intervals.

Names are found with natasha (slovnet's news NER) and compared by their lemmas (pymorphy3), so "в Москве" gives
back "Москва": a place or an organisation is recovered when all its words reappear in order, a person when the
last word of the name (the surname, or the only name given) does. Rule items are compared by a normal form:
digits of a phone number (8 as the Russian +7), a date as year-month-day (numeric and written-out forms alike; a
date recovered when every part the original gives agrees), a number without its thousands separators.

:func:`measure` gives an audit's rows, :func:`summarise` its figures; cosine, exact match and chrF are computed and
resampled as ``evaluate`` computes them, so that the two agree on the same rows.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache

import numpy as np

from ..util.errors import V2TError
from .metrics import bootstrap_interval, corpus_interval, exact_match, percent_per_sentence, resample_indices

ENTITIES = ("PER", "LOC", "ORG")
RULES = ("NUMBER", "DATE", "EMAIL", "PHONE")
CATEGORIES = ENTITIES + RULES
LABELS = {
    "PER": "person names",
    "LOC": "places",
    "ORG": "organisations",
    "NUMBER": "numbers",
    "DATE": "dates",
    "EMAIL": "e-mail addresses",
    "PHONE": "phone numbers",
}
ONE = {
    "PER": "a person's name",
    "LOC": "a place",
    "ORG": "an organisation",
    "NUMBER": "a number",
    "DATE": "a date",
    "EMAIL": "an e-mail address",
    "PHONE": "a phone number",
}

STOP_WORDS = frozenset(
    """
и в во не что он на я с со как а то все она так его но да ты к у же вы за бы по только ее мне было вот от меня еще
нет о из ему теперь когда даже ну вдруг ли если уже или ни быть был него до вас нибудь опять уж вам ведь там потом
себя ничего ей может они тут где есть надо ней для мы тебя их чем была сам чтоб без будто чего раз тоже себе под
будет ж тогда кто этот того потому этого какой совсем ним здесь этом один почти мой тем чтобы нее сейчас были куда
зачем всех никогда можно при наконец два об другой хоть после над больше тот через эти нас про всего них какая
много разве три эту моя впрочем хорошо свою этой перед иногда лучше чуть том нельзя такой им более всегда конечно
всю между это эта эти также свой своя свои который которая которые которого которой
the a an and or but if of to in on at by for with from as is are was were be been being it its this that these
those he she they we you i me my our your his her their them not no so do does did have has had will would can
could should there here what which who whom when where why how all any some than then too very just also into
about over after before up down out
""".split()
)

_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"""(?x)(?<![\w+])(?:
      \+\d{1,3}[\s.-]?(?:\(\d{1,5}\)|\d{1,5})(?:[\s.-]?\d{1,4}){2,5}   # +7 495 123-45-67, +44 20 7946 0958
    | 8[\s-]?\(?\d{3,5}\)?[\s-]?\d{1,3}[\s-]?\d{2}[\s-]?\d{2}         # 8 (800) 555-35-35, 89123456789
    | \(\d{3,5}\)\s?\d{1,3}[\s-]?\d{2}[\s-]?\d{2}                     # (495) 123-45-67
    | \d{3}-\d{2}-\d{2}                                                # 123-45-67
    )(?!\w)""")
_MONTHS = ("январ", "феврал", "март", "апрел", "ма", "июн", "июл", "август", "сентябр", "октябр", "ноябр", "декабр")
_MONTHS_EN = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH = (
    r"(?P<month>январ[ьяею]|феврал[ьяею]|март[аеу]?|апрел[ьяею]|ма[йяею]|июн[ьяею]|июл[ьяею]|август[аеу]?"
    r"|сентябр[ьяею]|октябр[ьяею]|ноябр[ьяею]|декабр[ьяею]|" + "|".join(_MONTHS_EN) + ")"
)
_DATES = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"(?<!\d)(?P<year>\d{4})-(?P<mon>\d{2})-(?P<day>\d{2})(?!\d)",  # 2019-05-07
        r"(?<!\d)(?<!\d\.)(?P<day>\d{1,2})[./](?P<mon>\d{1,2})[./](?P<year>\d{4}|\d{2})(?!\d)(?!\.\d)",  # 07.05.2019
        rf"(?<!\d)(?P<day>\d{{1,2}})\s+{_MONTH}(?:\s+(?P<year>\d{{4}}))?(?!\w)",  # 7 мая 2019, 7 May 2019
        rf"(?<!\w){_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year>\d{{4}})(?!\d)",  # May 7, 2019
        rf"(?<!\w){_MONTH}\s+(?P<year>\d{{4}})(?!\d)",  # мае 2019 года, May 2019
    )
]
_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:,\d+)?(?![\w])|(?<!\w)\d+(?:[.,]\d+)?")


def normal_word(word: str) -> str:
    return word.lower().replace("ё", "е")


def content_words(text: str) -> list[str]:
    """Lower-cased word tokens (ё = е) that are not stop words."""
    return [w for w in (normal_word(m) for m in _WORD.findall(text)) if w not in STOP_WORDS]


def content_recall(original: str, reconstruction: str) -> tuple[int, int]:
    """(content words of the original that reappear in the reconstruction, counted at most as often as they
    appear there; content words of the original)."""
    found = Counter(content_words(original))
    return sum((found & Counter(content_words(reconstruction))).values()), sum(found.values())


# ---------------------------------------------------------------------- rules
def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def emails(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(surface, normal form, span) of each e-mail address."""
    return [(m.group(), m.group().lower(), m.span()) for m in _EMAIL.finditer(text)]


def phones(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """Phone numbers in Russian and international forms; the normal form is the digits, with a Russian 8 (or a
    10-digit number) written as +7."""
    found = []
    for m in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        plus = m.group().startswith("+")
        if plus and not 10 <= len(digits) <= 15 or not plus and len(digits) not in (7, 10, 11):
            continue
        if not plus and len(digits) == 11:
            digits = "7" + digits[1:]
        elif not plus and len(digits) == 10:
            digits = "7" + digits
        found.append((m.group(), digits, m.span()))
    return found


def _month(word: str) -> int:
    word = normal_word(word)
    for number, name in enumerate(_MONTHS_EN, 1):
        if word == name:
            return number
    if word.startswith("ма") and len(word) <= 3:  # май, мая, мае, маю
        return 5
    return next(number for number, stem in enumerate(_MONTHS, 1) if stem != "ма" and word.startswith(stem))


def dates(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """Dates written as numbers (07.05.2019, 2019-05-07) or with the month's name (7 мая 2019 года, в мае 2019,
    May 7, 2019); the normal form is year-month-day with ``?`` for a part not given."""
    found: list[tuple[str, str, tuple[int, int]]] = []
    taken: list[tuple[int, int]] = []
    for pattern in _DATES:
        for m in pattern.finditer(text):
            if any(start < m.end() and m.start() < end for start, end in taken):
                continue
            parts = m.groupdict()
            month = _month(parts["month"]) if parts.get("month") else int(parts["mon"])
            day = int(parts["day"]) if parts.get("day") else None
            year = parts.get("year")
            if year and len(year) == 2:
                year = str(2000 + int(year) if int(year) <= 30 else 1900 + int(year))
            if not 1 <= month <= 12 or day is not None and not 1 <= day <= 31:
                continue
            key = f"{year or '?'}-{month:02d}-{'?' if day is None else f'{day:02d}'}"
            found.append((m.group(), key, m.span()))
            taken.append(m.span())
    return sorted(found, key=lambda item: item[2])


def numbers(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """Numbers (1 500 000, 3,5, 2019); the normal form drops thousands separators and reads a comma as a
    decimal point."""
    found = []
    for m in _NUMBER.finditer(text):
        key = re.sub(r"[ \u00a0\u202f]", "", m.group()).replace(",", ".")
        if "." in key:
            key = key.rstrip("0").rstrip(".")
        found.append((m.group(), key.lstrip("0") or "0", m.span()))
    return found


def rule_items(text: str) -> dict[str, dict[str, str]]:
    """E-mail addresses, phone numbers, dates and numbers of ``text``, each as {normal form: surface}; a part
    of the text counts once (the digits of a phone number or a date are not numbers too)."""
    items = {}
    for category, find in (("EMAIL", emails), ("PHONE", phones), ("DATE", dates), ("NUMBER", numbers)):
        found = find(text)
        items[category] = {key: surface for surface, key, _ in found}
        text = _mask(text, [span for _, _, span in found])
    return items


def rule_keys(text: str) -> dict[str, set[str]]:
    """What a reconstruction gives back of each rule category: every number it holds counts, the digits of its
    dates and phone numbers included (a year the original wrote alone is given back in a date too)."""
    keys = {category: set(items) for category, items in rule_items(text).items()}
    keys["NUMBER"] |= {key for _, key, _ in numbers(text)}
    return keys


# ---------------------------------------------------------------------- names
@lru_cache(maxsize=1)
def _natasha():
    try:
        from natasha import NewsEmbedding, NewsNERTagger, Segmenter
    except ImportError as exc:
        raise V2TError(
            f"the audit finds names with natasha, which does not import here ({exc}): pip install natasha pymorphy3"
        ) from exc
    return Segmenter(), NewsNERTagger(NewsEmbedding())


@lru_cache(maxsize=1)
def _morph():
    try:
        import pymorphy3
    except ImportError as exc:
        raise V2TError(
            f"the audit compares names by their lemmas with pymorphy3, which does not import here "
            f"({exc}): pip install pymorphy3"
        ) from exc
    logging.getLogger("pymorphy3").setLevel(logging.WARNING)  # it logs where its dictionaries are, at INFO
    return pymorphy3.MorphAnalyzer(lang="ru")


@lru_cache(maxsize=65536)
def lemma_forms(word: str) -> frozenset[str]:
    """Every dictionary form pymorphy3 reads ``word`` as, lower-cased, ё = е ("Ангелу": ангел, ангела)."""
    word = normal_word(word)
    return frozenset(normal_word(parse.normal_form) for parse in _morph().parse(word)) | {word}


def lemma(word: str) -> str:
    """The most likely dictionary form of a word, lower-cased, ё = е."""
    return normal_word(_morph().parse(normal_word(word))[0].normal_form)


def named_entities(text: str) -> dict[str, dict[tuple[str, ...], str]]:
    """Persons, locations and organisations natasha finds in ``text``, each as {its words' lemmas: surface}."""
    from natasha import Doc

    segmenter, tagger = _natasha()
    doc = Doc(text)
    doc.segment(segmenter)
    doc.tag_ner(tagger)
    found: dict[str, dict[tuple[str, ...], str]] = {category: {} for category in ENTITIES}
    for span in doc.spans:
        key = tuple(lemma(w) for w in _WORD.findall(span.text))
        if span.type in found and key:
            found[span.type].setdefault(key, span.text)
    return found


def name_given_back(category: str, name: tuple[str, ...], words: list[frozenset[str]]) -> bool:
    """Whether a name (its words' lemmas) reappears among a reconstruction's words (each word's possible
    lemmas): a place or an organisation whole and in order; a person by the last word of the name (the surname,
    or the only name given)."""
    part = name[-1:] if category == "PER" else name
    return any(all(part[j] in words[i + j] for j in range(len(part))) for i in range(len(words) - len(part) + 1))


def date_given_back(key: str, given: set[str]) -> bool:
    """Whether a reconstruction's dates (normal forms) agree with ``key`` on every part the original gives."""
    parts = key.split("-")
    return any(all(p == "?" or p == q for p, q in zip(parts, other.split("-"), strict=True)) for other in given)


# ---------------------------------------------------------------------- per row
def items_of(text: str) -> dict[str, dict]:
    """Every category's items in ``text``, {normal form: surface}."""
    return named_entities(text) | rule_items(text)


def leaked(original: str, reconstruction: str) -> dict[str, dict[str, list[str]]]:
    """For each category with items in the original: {"found": surfaces, "recovered": those that reappear in the
    reconstruction}."""
    found = items_of(original)
    words, keys = [lemma_forms(w) for w in _WORD.findall(reconstruction)], rule_keys(reconstruction)
    out = {}
    for category in CATEGORIES:
        if not found[category]:
            continue
        if category in ENTITIES:
            back = [s for key, s in found[category].items() if name_given_back(category, key, words)]
        elif category == "DATE":
            back = [s for key, s in found[category].items() if date_given_back(key, keys["DATE"])]
        else:
            back = [s for key, s in found[category].items() if key in keys[category]]
        out[category] = {"found": list(found[category].values()), "recovered": back}
    return out


def contained(reconstruction: str) -> dict[str, list[str]]:
    """Without an original: the items each category finds in the reconstruction itself."""
    return {category: list(items.values()) for category, items in items_of(reconstruction).items() if items}


# ---------------------------------------------------------------------- figures
def figure(value: float, low: float, high: float, digits: int = 2) -> dict:
    """{"value", "ci95"} rounded; a value that cannot be computed (no items) is None."""
    if not np.isfinite(value):
        return {"value": None, "ci95": None}
    interval = [round(low, digits), round(high, digits)] if np.isfinite(low) and np.isfinite(high) else None
    return {"value": round(value, digits), "ci95": interval}


def share(flags, resamples: np.ndarray) -> dict:
    """The percentage of rows where ``flags`` is true, with its 95% bootstrap interval."""
    return figure(*bootstrap_interval(np.asarray(flags, dtype=np.float64) * 100, resamples))


def ratio(numerators, denominators, resamples: np.ndarray) -> dict:
    """100 * sum(numerators) / sum(denominators) over rows (e.g. the share of the originals' items that
    reappear), with its 95% bootstrap interval; a resample without any item has no value and is left out of
    the interval, and without any item at all the value is None."""
    stats = np.stack([np.asarray(denominators, dtype=np.float64), np.asarray(numerators, dtype=np.float64)], 1)
    if stats[:, 0].sum() == 0:
        return {"value": None, "ci95": None}
    point = 100 * stats[:, 1].sum() / stats[:, 0].sum()
    totals = stats[resamples].sum(axis=1)  # (resamples, 2)
    kept = totals[totals[:, 0] > 0]
    low, high = np.percentile(100 * kept[:, 1] / kept[:, 0], [2.5, 97.5])
    return figure(point, float(low), float(high))


def leak_figures(rows: list[dict], resamples: np.ndarray) -> dict:
    """Per category, over rows with originals (each with ``leaks`` from :func:`leaked`): the rows whose original
    holds an item, the items found and recovered, the share of the items recovered (``item_recall``) and the share
    of all audited rows that give back at least one (``rows_leaking``); ``any``: at least one item of any kind."""
    out = {}
    for category in CATEGORIES:
        found = np.array([len(r["leaks"].get(category, {}).get("found", ())) for r in rows])
        back = np.array([len(r["leaks"].get(category, {}).get("recovered", ())) for r in rows])
        out[category] = {
            "label": LABELS[category],
            "rows_with": int((found > 0).sum()),
            "items": int(found.sum()),
            "recovered": int(back.sum()),
            "item_recall": ratio(back, found, resamples),
            "rows_leaking": share(back > 0, resamples),
        }
    found_any = [bool(r["leaks"]) for r in rows]
    back_any = [any(item["recovered"] for item in r["leaks"].values()) for r in rows]
    out["any"] = {"label": "any of these", "rows_with": sum(found_any), "rows_leaking": share(back_any, resamples)}
    return out


def contained_figures(rows: list[dict], resamples: np.ndarray) -> dict:
    """Per category, over rows without originals (each with ``contains`` from :func:`contained`): the rows whose
    reconstruction holds an item, their share of all rows, and the items."""
    out = {}
    for category in CATEGORIES:
        counts = np.array([len(r["contains"].get(category, ())) for r in rows])
        out[category] = {
            "label": LABELS[category],
            "rows_with": int((counts > 0).sum()),
            "items": int(counts.sum()),
            "rows_share": share(counts > 0, resamples),
        }
    return out


# ---------------------------------------------------------------------- the audit's rows and summary
def measure(rows: list[dict], originals: list[str | None] | None, show_progress: bool = True) -> list[dict]:
    """Stage 3, per row: with originals, exact match, sentence chrF, content words and the items recovered; without,
    the items the reconstruction holds. A row whose original is None (a store that keeps none for it: a NULL text
    column) is measured as a row without one, with ``original`` None: nothing is scored against an empty text."""
    from sacrebleu.metrics import CHRF
    from tqdm.auto import tqdm

    chrf, out = CHRF(), []
    for row in tqdm(rows, unit="row", desc="measuring", disable=not show_progress):
        record = {"id": row["id"], "reconstruction": row["reconstruction"], "cosine": row["cosine"]}
        original = None if originals is None else originals[row["index"]]
        if original is None:
            record |= {} if originals is None else {"original": None}
            record["contains"] = contained(row["reconstruction"])
        else:
            text = row["reconstruction"]
            recovered, found = content_recall(original, text)
            record |= {
                "original": original,
                "exact": bool(exact_match(text, original)),
                "chrf": round(chrf.sentence_score(text, [original]).score, 2),
                "content_words": {"found": found, "recovered": recovered},
                "leaks": leaked(original, text),
            }
        out.append(record)
    return out


def _shared(value: float, low: float, high: float) -> dict:
    """A figure `evaluate` reports too, rounded as it rounds it."""
    return {"value": round(value, 4), "ci95": [round(low, 4), round(high, 4)]}


def summarise(records: list[dict], identity: dict, extracted: int, resamples: int) -> dict:
    """The audit's figures with 95% bootstrap intervals (resampled as `evaluate` resamples: default_rng(0))."""
    from sacrebleu.metrics import CHRF

    n = len(records)
    boot = resample_indices(n, resamples)
    scored = [r for r in records if r.get("original") is not None]  # the rows with an original
    cosines = np.array([r["cosine"] for r in records], dtype=np.float64)
    mean, low, high = bootstrap_interval(cosines, boot)
    summary = {
        "format": 1,
        "source": identity["source"],
        "adapter": identity["adapter"],
        "decoding": identity["decoding"],
        "rows": n,
        "rows_in_source": identity["rows_in_source"],
        "sample": identity["sample"],
        "seed": identity["seed"],
        "skipped_nan": extracted - n,
        "originals": bool(scored),
        # rows the store keeps no original for (left out of the measures against originals); None: none given
        "rows_without_original": n - len(scored) if any("original" in r for r in records) else None,
        "bootstrap_resamples": resamples,
        "cosine": {
            "mean": round(mean, 4),
            "ci95": [round(low, 4), round(high, 4)],
            "median": round(float(np.median(cosines)), 4),
        },
    }
    if not scored:
        return summary | {"categories": contained_figures(records, boot)}
    if len(scored) < n:  # the measures against originals resample the rows that have one
        boot = resample_indices(len(scored), resamples)
    records = scored
    hyps, refs = [r["reconstruction"] for r in records], [r["original"] for r in records]
    exact = percent_per_sentence(exact_match, hyps, refs)
    words = [r["content_words"] for r in records]
    return summary | {
        "exact_match": _shared(*bootstrap_interval(exact, boot)),
        "chrf": _shared(*corpus_interval(CHRF(), hyps, refs, boot)),
        "content_word_recall": ratio([w["recovered"] for w in words], [w["found"] for w in words], boot),
        "categories": leak_figures(records, boot),
    }
