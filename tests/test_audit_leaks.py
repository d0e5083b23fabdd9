"""What the audit counts as leaked: names by natasha, numbers, dates, e-mail addresses and phone numbers by rules,
content words; and the figures over rows."""

import numpy as np
import pytest

from lora_v2t.tasks import leaks


def keys(found):
    return [key for _, key, _ in found]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Звоните: +7 (495) 123-45-67, с 9 до 18.", ["74951234567"]),
        ("Горячая линия 8 800 555-35-35 работает круглосуточно.", ["78005553535"]),
        ("Мой мобильный 89161234567, домашний 123-45-67.", ["79161234567", "1234567"]),
        (
            "Офис: 8(812)765-43-21; Лондон: +44 20 7946 0958; США: +1-202-555-0143.",
            ["78127654321", "442079460958", "12025550143"],
        ),
        ("Телефон приёмной (495) 987-65-43.", ["74959876543"]),
        ("В 2019 году продали 1 500 000 штук, рост 3,5%.", []),  # numbers, not phones
    ],
)
def test_phone_numbers_in_russian_and_international_forms(text, expected):
    assert keys(leaks.phones(text)) == expected


def test_the_same_phone_written_two_ways_has_one_normal_form():
    assert keys(leaks.phones("+7 916 123-45-67")) == keys(leaks.phones("8 (916) 1234567"))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Пишите на ivan.petrov@mail.ru или Support@Example.COM.", ["ivan.petrov@mail.ru", "support@example.com"]),
        ("Адрес: почта@пример.рф", ["почта@пример.рф"]),
        ("Встреча в 10@ нигде", []),
    ],
)
def test_email_addresses(text, expected):
    assert keys(leaks.emails(text)) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Саммит прошёл 5 мая 2019 года в Сочи.", ["2019-05-05"]),
        ("Договор от 07.05.2019 расторгнут 1/12/20.", ["2019-05-07", "2020-12-01"]),
        ("Отчёт за 2019-05-07 готов.", ["2019-05-07"]),
        ("В мае 2019 года и 12 декабря.", ["2019-05-?", "?-12-12"]),
        ("The summit was held on May 7, 2019 and on 3 March 2020.", ["2019-05-07", "2020-03-03"]),
        ("Мы поговорили 3 мартышки.", []),
        ("В 2019 году выросло на 5%.", []),  # a year alone is a number
    ],
)
def test_dates_numeric_and_written_out(text, expected):
    assert keys(leaks.dates(text)) == expected


def test_numbers_do_not_count_the_digits_of_dates_phones_or_addresses_twice():
    items = leaks.rule_items(
        "5 мая 2019 года бюджет вырос до 1 500 000 рублей (на 3,5%), звоните +7 495 123-45-67, пишите на a1@b2.ru."
    )
    assert set(items["NUMBER"]) == {"1500000", "3.5"}
    assert set(items["DATE"]) == {"2019-05-05"} and set(items["PHONE"]) == {"74951234567"}
    assert set(items["EMAIL"]) == {"a1@b2.ru"}


def test_names_are_found_by_natasha_and_compared_by_lemmas():
    original = "Владимир Путин встретился с Ангелой Меркель в Москве, сообщает ТАСС."
    found = leaks.named_entities(original)
    assert set(found["PER"].values()) == {"Владимир Путин", "Ангелой Меркель"}
    assert set(found["LOC"]) == {("москва",)} and set(found["ORG"]) == {("тасс",)}
    result = leaks.leaked(original, "Путина принимала Меркель, а в Москву приехал министр.")
    assert result["PER"]["recovered"] == ["Владимир Путин", "Ангелой Меркель"]  # the surnames came back
    assert result["LOC"]["recovered"] == ["Москве"] and result["ORG"]["recovered"] == []


def test_a_place_of_several_words_must_come_back_whole():
    original = "Мы переехали в Нижний Новгород."
    assert leaks.leaked(original, "Мы переехали в Нижнем Новгороде.")["LOC"]["recovered"] == ["Нижний Новгород"]
    assert leaks.leaked(original, "Мы переехали в Новгород.")["LOC"]["recovered"] == []


def test_rule_items_come_back_in_another_form():
    original = "Звоните +7 (495) 123-45-67 до 5 мая 2019 года, скидка 1 500 рублей."
    result = leaks.leaked(original, "Звоните 8 495 1234567 до 05.05.2019, скидка 1500 рублей.")
    assert result["PHONE"]["recovered"] and result["DATE"]["recovered"] and result["NUMBER"]["recovered"]
    assert leaks.leaked("В мае 2019 года", "1 мая 2019")["DATE"]["recovered"] == ["мае 2019"]
    assert leaks.leaked("5 мая 2019", "в мае 2019")["DATE"]["recovered"] == []  # the day is missing


def test_content_word_recall_counts_lowercased_words_without_stop_words():
    assert leaks.content_words("Кошка спит на Диване, а ёж — в лесу.") == ["кошка", "спит", "диване", "еж", "лесу"]
    assert leaks.content_recall("Кошка спит на диване.", "кошка спит на кровати") == (2, 3)
    assert leaks.content_recall("The cat and the dog", "a dog") == (1, 2)


def test_without_originals_the_reconstruction_itself_is_read():
    held = leaks.contained("Вчера Путин прилетел в Москву 5 мая 2019 года с 200 журналистами.")
    assert held["PER"] == ["Путин"] and held["LOC"] == ["Москву"]
    assert held["DATE"] == ["5 мая 2019"] and held["NUMBER"] == ["200"] and "EMAIL" not in held


def test_figures_are_percentages_with_bootstrap_intervals():
    resamples = np.random.default_rng(0).integers(0, 4, size=(200, 4))
    share = leaks.share([True, False, False, True], resamples)
    assert share["value"] == 50.0 and 0 <= share["ci95"][0] <= 50 <= share["ci95"][1] <= 100
    ratio = leaks.ratio([1, 0, 2, 0], [1, 0, 4, 1], resamples)
    assert ratio["value"] == 50.0 and ratio["ci95"][0] <= 50 <= ratio["ci95"][1]
    assert leaks.ratio([0, 0], [0, 0], resamples[:, :2] % 2) == {"value": None, "ci95": None}
