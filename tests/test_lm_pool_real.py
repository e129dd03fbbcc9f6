"""EndpointPool over two real llama.cpp servers of SmolLM2, one of them killed in the middle of
an evaluation: the evaluation completes, with the results of the run where both stayed up."""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import ExitStack

import pytest
from conftest import llama_server

from cotune import Example, InputField, OutputField, Predict, Signature, context
from cotune.evaluate import Evaluate
from cotune.lm.pool import EndpointPool

pytestmark = pytest.mark.real_model


class Capital(Signature):
    """Name the capital city of the country."""

    country: str = InputField()
    capital: str = OutputField()


COUNTRIES = ["France", "Italy", "Spain", "Japan", "Germany", "Egypt", "Peru", "Canada",
             "Kenya", "Norway"]


@pytest.fixture(scope="module")
def two_servers(smollm2_path, tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    threads = ("--n_threads", os.environ.get("COTUNE_LLAMA_THREADS", "1"))
    logs = tmp_path_factory.mktemp("pool_servers")
    with ExitStack() as stack:
        yield [stack.enter_context(llama_server(smollm2_path, logs / f"server{i}.log", threads))
               for i in range(2)]


def test_killing_one_replica_midway_leaves_the_evaluation_and_its_results_unchanged(two_servers):
    (url_a, _), (url_b, process_b) = two_servers
    devset = [Example(country=c, capital="?").with_inputs("country") for c in COUNTRIES]
    program = Predict(Capital, max_tokens=12)
    kill_after = 3
    scored = 0
    lock = threading.Lock()

    def metric(example, prediction, trace=None):
        nonlocal scored
        with lock:
            scored += 1
            if killing and scored == kill_after:
                process_b.kill()  # requests in flight on it break; the rest must go to a
        return float(bool(prediction.get("capital")))

    evaluate = Evaluate(devset, metric, num_threads=4, display_progress=False)

    def pool() -> EndpointPool:
        return EndpointPool("smollm2", [url_a, url_b], cache=None, max_concurrency=2,
                            timeout=60, retry_initial_delay=0.05, health_interval=0.2)

    killing = False
    both = pool()
    with context(lm=both):
        clean = evaluate(program)
    assert all(e.requests > 0 for e in both.stats())  # both replicas answered

    killing, scored = True, 0
    survivor = pool()
    with context(lm=survivor):
        result = evaluate(program)
    process_b.wait(timeout=10)

    assert result.complete and result.num_lm_errors == 0 and result.num_errors == 0
    assert [dict(r.prediction) for r in result.results] == \
        [dict(r.prediction) for r in clean.results]
    assert result.score == clean.score
    a, b = survivor.stats()
    assert not b.healthy and b.failures >= 1
    assert a.requests >= len(devset) - kill_after
    assert result.usage.calls == len(devset)
