"""bench/correction.py's paired comparisons: a gain over a baseline on the same sentences, with its interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "correction.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_correction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resamples(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, n, (200, n))


def test_a_gain_is_the_mean_paired_difference_and_its_interval_holds_it(bench):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, 400)
    better = base + rng.normal(0.03, 0.02, 400)
    gain, low, high = bench.paired_gain(better, base, resamples(400))
    assert gain == pytest.approx(float((better - base).mean()), abs=1e-4)
    assert 0 < low < gain < high < 0.06


def test_scores_that_differ_by_a_constant_gain_it_with_no_width(bench):
    base = np.random.default_rng(2).uniform(0.2, 0.9, 50)
    assert bench.paired_gain(base + 0.01, base, resamples(50)) == pytest.approx([0.01, 0.01, 0.01], abs=1e-4)


def test_the_correctors_are_compared_pairwise_at_each_step_from_the_greedy_text(bench):
    n = 30
    scores = {
        "greedy": np.full(n, 0.5),
        "corrector a/final, step 1": np.full(n, 0.6),
        "corrector a/final, step 2": np.full(n, 0.7),
        "corrector b, step 1": np.full(n, 0.55),
        "corrector, step 1": np.full(n, 0.58),
        "corrector, step 2": np.full(n, 0.66),
        "6 beams reranked + corrector, step 1": np.full(n, 0.9),
    }
    out = bench.compare_correctors(scores, resamples(n))
    assert [(c["a"], c["b"]) for c in out] == [
        ("corrector a/final, step 1", "corrector b, step 1"),
        ("corrector a/final, step 1", "corrector, step 1"),
        ("corrector b, step 1", "corrector, step 1"),
        ("corrector a/final, step 2", "corrector, step 2"),
    ]
    assert out[0]["cosine_gain"] == pytest.approx([0.05, 0.05, 0.05], abs=1e-4)
    assert bench.format_gain(out[2]["cosine_gain"]) == "-0.0300 [-0.0300, -0.0300]"
    assert out[3]["cosine_gain"] == pytest.approx([0.04, 0.04, 0.04], abs=1e-4)


def test_two_runs_final_bundles_get_apart_names(bench):
    assert bench.corrector_label("checkpoints/runs/run-a/final") == "run-a/final"
    assert bench.corrector_label("checkpoints/adapters/v4-corrector") == "v4-corrector"
