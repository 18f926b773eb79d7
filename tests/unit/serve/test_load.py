"""A tier's recent queue wait, from vLLM's own metrics text."""

from __future__ import annotations

import pytest

from hpcrag.serve.load import ServerLoad, TierSample, parse_metrics, recent_wait_s

METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="tiny-llama"} 1.0
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="tiny-llama"} 4.0
vllm:request_queue_time_seconds_count{engine="0",model_name="tiny-llama"} 5.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny-llama"} 2.5
vllm:request_queue_time_seconds_created{engine="0",model_name="tiny-llama"} 1.7e+09
"""


def test_parse_sums_label_sets_and_ignores_buckets() -> None:
    assert parse_metrics(METRICS) == ServerLoad(queue_time_sum=2.5, queue_time_count=5.0, waiting=4.0)
    assert parse_metrics("garbage\nvllm:num_requests_waiting{} not-a-number\n") == ServerLoad(0.0, 0.0, 0.0)


def test_recent_wait_is_the_mean_of_requests_scheduled_in_between() -> None:
    before = TierSample(100.0, {"a": ServerLoad(2.0, 4, 0), "b": ServerLoad(0.0, 0, 0)})
    after = TierSample(
        130.0, {"a": ServerLoad(14.0, 8, 2), "b": ServerLoad(6.0, 2, 0), "c": ServerLoad(9, 9, 0)}
    )
    # a: +12 s over +4 requests, b: +6 s over +2; c appeared in between and is left out.
    assert recent_wait_s(before, after) == pytest.approx(18 / 6)


def test_waiting_with_nothing_scheduled_counts_the_whole_interval() -> None:
    before = TierSample(100.0, {"a": ServerLoad(2.0, 4, 5)})
    stuck = TierSample(145.0, {"a": ServerLoad(2.0, 4, 7)})
    idle = TierSample(145.0, {"a": ServerLoad(2.0, 4, 0)})
    assert recent_wait_s(before, stuck) == pytest.approx(45.0)
    assert recent_wait_s(before, idle) == 0.0
