"""benchmarks/bench_luss.py times the stage's own step and the streamed scoring (issue 17's benchmark)."""

from __future__ import annotations


def test_bench_luss_steps_and_scores_the_stage_code():
    from benchmarks.bench_luss import time_scoring, time_steps

    train = time_steps(preset="tiny", clip_len=8, size=(16, 32), batch=2, steps=2, warmup=1)
    assert train["timed_steps"] == 2 and train["parameters"] > 0 and train["step_s"] > 0
    score = time_scoring(preset="tiny", clip_len=8, size=(16, 32), frames=20, batch=4)
    assert score["frames"] == 20 and score["frames_per_s"] > 0
