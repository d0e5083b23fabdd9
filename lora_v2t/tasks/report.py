"""The audit's report: one self-contained HTML file (inline CSS, the histogram as inline SVG, no script, no
request: its Content-Security-Policy forbids any) that opens from disk: a one-paragraph answer at the top, the
cosine histogram, a table per category and the rows that leak most, side by side."""

from __future__ import annotations

import io
import os
from html import escape
from pathlib import Path

from .leaks import CATEGORIES, LABELS, ONE

BAR_COLOUR = "#c0392b"
NUMERIC = ' class="num"'
ORDER = ("PER", "LOC", "ORG", "DATE", "NUMBER", "PHONE", "EMAIL")  # the headline's order: names first
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
p.headline { font-size: 1.15rem; line-height: 1.5; background: #fdf2f0; border-left: 4px solid #c0392b;
  padding: .8rem 1rem; }
p.about { color: #555; font-size: .9rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
mark { background: #f9d2cc; }
"""


def percent(figure: dict | None) -> str:
    """``23.4% (95% CI 20.1-26.8%)``, or ``n/a`` for a figure without a value."""
    if not figure or figure.get("value") is None:
        return "n/a"
    interval = figure.get("ci95")
    tail = f" (95% CI {interval[0]:.1f}\u2013{interval[1]:.1f}%)" if interval else ""
    return f"{figure['value']:.1f}%{tail}"


def headline(summary: dict) -> str:
    """The one-paragraph answer (plain text)."""
    n, categories = summary["rows"], summary["categories"]
    present = [c for c in ORDER if categories[c]["rows_with"]]
    cosine = summary["cosine"]
    skipped = f" ({summary['skipped_nan']:,} rows with NaN or inf were skipped.)" if summary["skipped_nan"] else ""
    missing = summary.get("rows_without_original") or 0  # None: no originals given; older summaries lack it
    if summary["originals"]:
        audited = f"{n:,} audited vectors"
        if missing:  # rows the store keeps no original for: the figures below are of the others
            audited = (
                f"the {n - missing:,} audited vectors with an original ({missing:,} more have none in the store "
                "and are left out of what is checked against originals)"
            )
        parts = [f"{percent(categories[c]['rows_leaking'])} {ONE[c]}" for c in present]
        if parts:  # "23.0% (95% CI ...) give back at least one person's name; 12.5% (...) a place; ..."
            first = present[0]
            noun = ONE[first].split(" ", 1)[1]
            parts[0] = f"{percent(categories[first]['rows_leaking'])} give back at least one {noun}"
            leaks = "; ".join(parts)
        else:
            leaks = (
                "none of the originals holds a name, place, organisation, number, date, e-mail address or "
                "phone number that the audit looks for"
            )
        return (
            f"Of {audited}, {leaks}. {percent(summary['exact_match'])} are given back word for "
            f"word, and the reconstructions keep {percent(summary['content_word_recall'])} of the originals' "
            f"content words (chrF {summary['chrf']['value']:.1f}). The mean cosine between a vector and the "
            f"re-embedding of its reconstruction is {cosine['mean']:.3f}.{skipped}"
        )
    parts = [f"{ONE[c]} in {percent(categories[c]['rows_share'])}" for c in present]
    holds = (
        ("hold " + "; ".join(parts))
        if parts
        else (
            "hold no name, place, organisation, number, date, e-mail address or phone number that the audit looks for"
        )
    )
    given = "no row has an original in the store" if missing else "no originals were given"
    return (
        f"Of {n:,} audited vectors ({given}, so nothing is checked against them), the "
        f"reconstructions {holds}. Their mean re-embedding cosine is {cosine['mean']:.3f} (median "
        f"{cosine['median']:.3f}): the closer a reconstruction's cosine is to 1, the more closely it says what "
        f"its vector encodes.{skipped}"
    )


def histogram_svg(cosines: list[float]) -> str:
    """The cosine histogram as an inline ``<svg>`` element (text kept as text; no date or random ids in it)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    low = min(0.0, min(cosines))
    mean = sum(cosines) / len(cosines)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "lora_v2t-audit"}):
        fig = Figure(figsize=(7.5, 3.2))
        ax = fig.add_subplot()
        ax.hist(cosines, bins=40, range=(low, 1.0), color=BAR_COLOUR)
        ax.axvline(mean, color="#333333", linestyle="--", label=f"mean {mean:.3f}")
        ax.set_xlabel("cosine(vector, re-embedded reconstruction)")
        ax.set_ylabel("rows")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left")
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    return svg.replace("<svg ", '<svg id="cosine-histogram" role="img" aria-label="histogram of the cosines" ', 1)


def _table(header: list[str], rows: list[list[str]], numeric: range | tuple = range(1, 99)) -> str:
    """An HTML table of cells given as HTML; the ``numeric`` columns right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{NUMERIC if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def category_table(summary: dict) -> str:
    categories = summary["categories"]
    if summary["originals"]:
        header = [
            "what",
            "rows whose original holds it",
            "items in the originals",
            "items given back",
            "share of the items given back",
            "audited rows giving back at least one",
        ]
        rows = [
            [
                escape(LABELS[c]),
                f"{categories[c]['rows_with']:,}",
                f"{categories[c]['items']:,}",
                f"{categories[c]['recovered']:,}",
                percent(categories[c]["item_recall"]),
                percent(categories[c]["rows_leaking"]),
            ]
            for c in ORDER
        ]
        anything = categories["any"]
        rows.append(["any of these", f"{anything['rows_with']:,}", "", "", "", percent(anything["rows_leaking"])])
        return _table(header, rows)
    header = ["what", "rows whose reconstruction holds it", "share of the rows", "items"]
    return _table(
        header,
        [
            [
                escape(LABELS[c]),
                f"{categories[c]['rows_with']:,}",
                percent(categories[c]["rows_share"]),
                f"{categories[c]['items']:,}",
            ]
            for c in ORDER
        ],
    )


def sentence_table(summary: dict) -> str:
    cosine = summary["cosine"]
    rows = [
        [
            "mean cosine (re-embedding)",
            f"{cosine['mean']:.4f} (95% CI {cosine['ci95'][0]:.4f}\u2013{cosine['ci95'][1]:.4f})",
        ]
    ]
    if summary["originals"]:
        chrf = summary["chrf"]
        rows += [
            ["exact sentence recovery", percent(summary["exact_match"])],
            ["content-word recall", percent(summary["content_word_recall"])],
            ["chrF", f"{chrf['value']:.2f} (95% CI {chrf['ci95'][0]:.2f}\u2013{chrf['ci95'][1]:.2f})"],
        ]
    return _table(["measure", "value"], rows)


def marked(text: str, surfaces: list[str]) -> str:
    """``text`` escaped, with the first free occurrence of each surface in ``<mark>``."""
    spans: list[tuple[int, int]] = []
    for surface in sorted(set(surfaces), key=len, reverse=True):
        start = text.find(surface)
        while start >= 0 and any(start < e and s < start + len(surface) for s, e in spans):
            start = text.find(surface, start + 1)
        if start >= 0 and surface:
            spans.append((start, start + len(surface)))
    out, position = [], 0
    for start, end in sorted(spans):
        out += [escape(text[position:start]), f"<mark>{escape(text[start:end])}</mark>"]
        position = end
    return "".join(out) + escape(text[position:])


def leak_score(record: dict) -> tuple:
    """What makes a row leak more: items given back, then a whole sentence, then chrF."""
    back = sum(len(item["recovered"]) for item in record["leaks"].values())
    return back, record["exact"], record["chrf"]


def top_rows(records: list[dict], top: int) -> str:
    """The ``top`` rows that leak most (with originals) or have the highest cosines (without), side by side."""
    scored = [r for r in records if r.get("original") is not None]  # a row without an original cannot leak one
    if scored:
        picked = sorted(scored, key=leak_score, reverse=True)[:top]
        rows = []
        for r in picked:
            back = [s for item in r["leaks"].values() for s in item["recovered"]]
            given = "; ".join(
                f"{LABELS[c]}: {', '.join(r['leaks'][c]['recovered'])}"
                for c in CATEGORIES
                if r["leaks"].get(c, {}).get("recovered")
            )
            rows.append(
                [
                    escape(str(r["id"])),
                    f"{r['cosine']:.3f}",
                    marked(r["original"], back),
                    marked(r["reconstruction"], []),
                    escape(given or "-"),
                ]
            )
        return _table(
            ["id", "cosine", "original (given back: marked)", "reconstruction", "given back"], rows, numeric=(1,)
        )
    picked = sorted(records, key=lambda r: r["cosine"], reverse=True)[:top]
    rows = [
        [
            escape(str(r["id"])),
            f"{r['cosine']:.3f}",
            escape(r["reconstruction"]),
            escape("; ".join(f"{LABELS[c]}: {', '.join(v)}" for c, v in r["contains"].items()) or "-"),
        ]
        for r in picked
    ]
    return _table(["id", "cosine", "reconstruction", "holds"], rows, numeric=(1,))


def build_html(summary: dict, records: list[dict], top: int = 20) -> str:
    kind = "leak most" if summary["originals"] else "have the highest cosines"
    shown = sum(r.get("original") is not None for r in records) if summary["originals"] else len(records)
    sample = f"a seeded sample (seed {summary['seed']}) of " if summary["sample"] else ""
    about = (
        f"Source: {summary['source']}; {sample}{summary['rows_in_source']:,} rows. Adapter: {summary['adapter']}. "
        f"95% bootstrap intervals over {summary['bootstrap_resamples']:,} resamples of the rows."
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>Leakage audit</title>",
            f"<style>{STYLE}</style></head><body>",
            "<h1>Leakage audit: what these vectors give away</h1>",
            f'<p class="headline" id="headline">{escape(headline(summary))}</p>',
            f'<p class="about">{escape(about)}</p>',
            "<h2>Re-embedding cosine</h2>",
            histogram_svg([r["cosine"] for r in records]),
            "<h2>Sentences</h2>",
            sentence_table(summary),
            "<h2>By category</h2>",
            category_table(summary),
            f"<h2>The {min(top, shown)} rows that {kind}</h2>",
            top_rows(records, top),
            "</body></html>",
            "",
        ]
    )


def write_report(path: Path, summary: dict, records: list[dict], top: int = 20) -> None:
    """Write the report whole to a temporary name, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(build_html(summary, records, top), encoding="utf-8")
    os.replace(tmp, path)
