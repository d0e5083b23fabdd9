"""The audit's report: one self-contained HTML file, opened in a real headless Chromium (no models needed: the
rows are real news sentences and reconstructions written for the test)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lora_v2t.tasks.audit import write_results
from lora_v2t.tasks.leaks import measure, summarise
from lora_v2t.tasks.report import BAR_COLOUR, headline

ORIGINALS = [
    "Владимир Путин встретился с Ангелой Меркель в Москве 5 мая 2019 года.",
    "Компания «Газпром» сообщила о росте прибыли на 12 процентов.",
    "Звоните по телефону +7 (495) 123-45-67 или пишите на info@example.ru.",
    "Кошка спит на диване.",
    "Члены Ассамблеи Уэльса не хотят «походить на маппетов».",
    "В 2018 году в Париже прошли выборы.",
]
RECONSTRUCTIONS = [
    "Путин встретил Меркель в Москве в мае.",
    "Газпром сообщил о росте на 12 процентов.",
    "Звоните по номеру 8 495 123-45-67.",
    "Кошка спит на диване.",
    "Члены парламента не хотят походить на кукол.",
    "Выборы прошли в Лондоне.",
]


def chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


def make_report(folder: Path, originals=True) -> dict:
    rows = [
        {"id": f"row-{i}", "index": i, "reconstruction": text, "cosine": round(0.55 + 0.07 * i, 4)}
        for i, text in enumerate(RECONSTRUCTIONS)
    ]
    records = measure(rows, ORIGINALS if originals else None, show_progress=False)
    identity = {
        "source": "test vectors",
        "adapter": "test adapter",
        "decoding": {},
        "rows_in_source": len(rows),
        "sample": None,
        "seed": None,
    }
    summary = summarise(records, identity, len(rows), resamples=200)
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder, records, summary, top=20)
    return summary


def run_chromium(binary: str, tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` with its own profile and a network log, background services off."""
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--log-net-log={tmp_path / 'net.json'}",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def page_requests(net_log: Path) -> list[str]:
    """The URLs the page itself asked for: Chromium's own services start their requests from no origin, a page's
    from its own (a file's is "null")."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]


def test_the_report_is_one_file_that_asks_for_nothing(tmp_path):
    make_report(tmp_path / "audit")
    html = (tmp_path / "audit" / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "default-src 'none'" in html
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']|url\(([^)]*)\)""", html)
    assert not [link for pair in links for link in pair if link and not link.startswith(("#", "data:"))]
    assert html.count("<svg") == 1 and "<img" not in html  # the histogram is inline


def test_the_headline_says_what_leaks_with_intervals(tmp_path):
    summary = make_report(tmp_path / "audit")
    text = headline(summary)
    per = summary["categories"]["PER"]["rows_leaking"]
    assert text.startswith(f"Of 6 audited vectors, {per['value']:.1f}% (95% CI ")
    assert "give back at least one person's name" in text and "word for word" in text
    assert summary["categories"]["PER"]["recovered"] == 2  # Путин and Меркель, by their surnames
    assert summary["categories"]["PHONE"]["recovered"] == 1 and summary["categories"]["EMAIL"]["recovered"] == 0
    blind = headline(make_report(tmp_path / "blind", originals=False))
    assert "no originals were given" in blind and "mean re-embedding cosine is" in blind


def test_rows_without_an_original_are_counted_not_scored_against_an_empty_one(tmp_path):
    """A store that keeps no original for a row (a NULL text column): the row is not scored as if its original
    were empty (exact false, chrF 0); the measures against originals are of the other rows, and it is counted."""
    rows = [
        {"id": f"row-{i}", "index": i, "reconstruction": text, "cosine": round(0.55 + 0.07 * i, 4)}
        for i, text in enumerate(RECONSTRUCTIONS)
    ]
    identity = {"source": "s", "adapter": "a", "decoding": {}, "rows_in_source": 6, "sample": None, "seed": None}
    some = [None, *ORIGINALS[1:3], None, *ORIGINALS[4:]]
    records = measure(rows, some, show_progress=False)
    assert records[0]["original"] is None and "exact" not in records[0] and "chrf" not in records[0]
    assert "contains" in records[0] and records[1]["original"] == ORIGINALS[1]
    summary = summarise(records, identity, 6, resamples=200)
    assert summary["originals"] is True and summary["rows_without_original"] == 2 and summary["rows"] == 6
    reference = summarise(
        measure([rows[i] | {"index": j} for j, i in enumerate((1, 2, 4, 5))], [some[i] for i in (1, 2, 4, 5)], False),
        identity,
        4,
        200,
    )
    for key in ("exact_match", "chrf", "content_word_recall", "categories"):
        assert summary[key] == reference[key], key  # as if the rows without an original were not there
    assert records[1]["chrf"] > 0
    assert headline(summary).startswith("Of the 4 audited vectors with an original (2 more have none in the store")
    write_results(tmp_path, records, summary, top=20)
    assert "The 4 rows that leak most" in (tmp_path / "report.html").read_text(encoding="utf-8")
    none = summarise(measure(rows, [None] * 6, False), identity, 6, 200)
    assert none["originals"] is False and none["rows_without_original"] == 6 and "exact_match" not in none
    assert "no row has an original in the store" in headline(none)
    blind = summarise(measure(rows, None, False), identity, 6, 200)
    assert blind["rows_without_original"] is None and "no originals were given" in headline(blind)


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on this machine (Debian: apt-get install chromium)")
def test_chromium_renders_the_report_without_a_network_request(tmp_path):
    from PIL import Image

    summary = make_report(tmp_path / "audit")
    page = tmp_path / "audit" / "report.html"
    control = tmp_path / "control.html"  # a page that does ask: the network log must show it
    control.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    run_chromium(chromium(), tmp_path, control, "--dump-dom")
    assert page_requests(tmp_path / "net.json") == ["http://127.0.0.1:9/x.png"]

    dom = run_chromium(chromium(), tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert headline(summary).split(" (95% CI")[0] in dom.stdout and 'id="cosine-histogram"' in dom.stdout
    assert page_requests(tmp_path / "net.json") == []
    shot = tmp_path / "shot.png"
    result = run_chromium(chromium(), tmp_path, page, f"--screenshot={shot}", "--window-size=1200,1400")
    assert result.returncode == 0 and shot.stat().st_size > 0, result.stderr[-2000:]
    assert page_requests(tmp_path / "net.json") == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 10  # not a blank page
    bar = np.array([int(BAR_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - bar).sum(axis=2) < 30).sum() > 500  # the histogram's bars were drawn
