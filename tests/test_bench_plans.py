"""bench/budget_plans.py's plans: how they are written, what they cost, and the ones refused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "budget_plans.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_budget_plans", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize(
    "spec, decodes, fields",
    [
        ("beams=15", 16, {"beams": 15, "steps": 0, "samples": 0}),
        ("beams=11,corrector=2x2,steps=1", 16, {"beams": 11, "width": 2, "proposals": 2, "steps": 1}),
        ("beams=7,corrector=2x2,steps=2", 16, {"beams": 7, "width": 2, "proposals": 2, "steps": 2}),
        ("beams=0,samples=15@0.5", 16, {"beams": 0, "samples": 15, "temperature": 0.5}),
        ("samples=3", 4, {"samples": 3, "temperature": 0.8}),
        ("beams=7,samples=8@0.7", 16, {"beams": 7, "samples": 8, "temperature": 0.7}),
        ("beams=7,partner=7", 16, {"beams": 7, "partner": 7, "steps": 0}),
        ("beams=14,partner=0", 16, {"beams": 14, "partner": 0}),
        ("beams=15", 16, {"partner": None}),
    ],
)
def test_a_plan_counts_every_decode_it_may_spend(bench, spec, decodes, fields):
    plan = bench.parse_plan(spec)
    assert plan.spec == spec and plan.decodes == decodes
    assert {key: getattr(plan, key) for key in fields} == fields


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("beams=1", "beams and partner are 0 or at least 2"),
        ("beams=7,partner=1", "beams and partner are 0 or at least 2"),
        ("beams=-2", "counts (beams, steps, samples, partner) are >= 0"),
        ("beams=3,partner=-2", "counts (beams, steps, samples, partner) are >= 0"),
        ("beams=4,beams=5", "'beams' is not one of"),
        ("width=2", "'width' is not one of"),
        ("beams=3,corrector=2x", "corrector='2x' is not a number"),
        ("beams=3,corrector=2x2", "corrector=WxK and steps=S go together"),
        ("beams=3,steps=1", "corrector=WxK and steps=S go together"),
        ("beams=3,corrector=0x2,steps=1", "keeps at least 1 candidate"),
        ("corrector=1x1,steps=1,samples=2", "the corrector with samples or a partner in one plan"),
        ("beams=3,corrector=1x1,steps=1,partner=0", "the corrector with samples or a partner in one plan"),
        ("samples=4@0", "temperature is > 0"),
        ("samples=many", "samples='many' is not a number"),
    ],
)
def test_a_plan_written_wrong_is_one_line_naming_it(bench, spec, problem):
    with pytest.raises(SystemExit) as raised:
        bench.parse_plan(spec)
    message = str(raised.value)
    assert problem in message and message.startswith(f"plan {spec!r}: ") and "\n" not in message


@pytest.mark.parametrize(
    "spec, calls",
    [
        ("beams=15", [("main", {}), ("main", {"num_beams": 15, "num_return_sequences": 15})]),
        ("beams=0,partner=0", [("main", {}), ("partner", {})]),
        (
            "beams=7,partner=7",
            [
                ("main", {}),
                ("main", {"num_beams": 7, "num_return_sequences": 7}),
                ("partner", {}),
                ("partner", {"num_beams": 7, "num_return_sequences": 7}),
            ],
        ),
    ],
)
def test_a_pooled_plan_decodes_what_it_counts_from_each_hypothesizer(bench, spec, calls):
    plan = bench.parse_plan(spec)
    made = bench.pool_calls(plan, "main")
    assert made == calls
    assert sum(options.get("num_return_sequences", 1) for _, options in made) == plan.decodes


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--plan", "beams=7,partner=7"], "--partner DIR (the second hypothesizer) and plans with partner=P go"),
        (["--partner", "P", "--plan", "beams=15"], "--partner DIR (the second hypothesizer) and plans with partner"),
        (["--corrector", "C", "--plan", "beams=15"], "--corrector is the corrector of corrector=WxK plans"),
    ],
)
def test_an_option_without_its_plan_or_a_plan_without_its_option_is_refused_before_loading(
    bench, monkeypatch, capsys, argv, problem
):
    monkeypatch.setattr(sys, "argv", ["budget_plans.py", "--adapter", "A", *argv])
    with pytest.raises(SystemExit):
        bench.main()
    assert problem in capsys.readouterr().err
