"""Whole ``cotune optimize`` runs through the fault proxy, in front of a deterministic fake
OpenAI-compatible server answering the parity task (tests/scripted_task.py):

* at a 10% fault rate (every kind of fault) the program is byte for byte the clean run's;
* an outage in the middle of a run ends it with exit status 3 and a one-line error naming the
  endpoint; the journal holds nothing computed during the outage, and the rerun after recovery
  gives the clean result;
* a dead endpoint, an unknown model or a hanging server fails within seconds;
* ``--max-calls`` covers the whole command (preflight, optimization, test evaluation).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import scripted_task as scripted
from conftest import FakeOpenAIServer, free_port
from fault_proxy import KINDS, proxies
from typer.testing import CliRunner

from cotune.cli import LM_FAILURE_EXIT, app
from cotune.runs.folder import RunFolder

TASK_FILE = Path(__file__).with_name("scripted_task.py")
TIMEOUT = 0.3
RANDOM_SEARCH = ["--optimizer", "random-search", "--set", "num_candidates=3"]
MIPRO = ["--optimizer", "mipro", "--preset", "light", "--set", "num_trials=4",
         "--set", "num_instruction_candidates=3", "--set", "num_demo_candidates=2",
         "--set", "minibatch_size=6", "--set", "full_eval_every=2"]


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch, tmp_path):
    """The CLI's LMs retry after 10-20 ms instead of 0.5 s and more; a private shared cache."""
    from cotune.lm import factory

    real = factory.make_lm

    def make_lm(model, base_url=None, **options):
        options.setdefault("retry_initial_delay", 0.01)
        options.setdefault("retry_max_delay", 0.02)
        return real(model, base_url, **options)

    monkeypatch.setattr("cotune.lm.factory.make_lm", make_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))


@pytest.fixture
def server():
    fake = FakeOpenAIServer(lambda body: scripted.scripted_answer(
        SimpleNamespace(messages=body["messages"])))
    yield fake
    fake.close()


@pytest.fixture
def proxy(server):
    with proxies(server.url, hang_s=TIMEOUT + 0.2, retry_after="0.05") as make:
        yield make


def optimize(run: Path, url: str, *extra: str):
    args = ["optimize", "--task", str(TASK_FILE), "--model", "fake-model", "--base-url", url,
            "--timeout", str(TIMEOUT), "--threads", "2", "--run-dir", str(run),
            "--cache-dir", str(run), *extra]
    return CliRunner().invoke(app, args)


def journal(run: Path) -> dict[str, str]:
    path = run / "journal.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM entries"))


def assert_lm_failure(result, *fragments: str) -> None:
    assert result.exit_code == LM_FAILURE_EXIT, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output.replace("\n", ""), result.output


@pytest.mark.parametrize("optimizer", [RANDOM_SEARCH, MIPRO], ids=["random-search", "mipro"])
def test_a_ten_percent_fault_rate_gives_the_program_of_a_clean_run(tmp_path, proxy, optimizer):
    clean = tmp_path / "clean"
    assert optimize(clean, proxy().url, *optimizer).exit_code == 0

    faulty = tmp_path / "faulty"
    faults = proxy(rate=0.1, seed=1)
    result = optimize(faulty, faults.url, *optimizer)
    assert result.exit_code == 0, result.output
    injected = faults.stats()["faults"]
    assert set(injected) == set(KINDS), injected  # every kind of fault, all recovered

    assert (faulty / "program.json").read_bytes() == (clean / "program.json").read_bytes()
    got, want = (RunFolder(d).read_json("result.json") for d in (faulty, clean))
    assert (got["val_score"], got["test_score"]) == (want["val_score"], want["test_score"])
    assert got["usage"]["total"]["calls"] == want["usage"]["total"]["calls"]
    assert journal(faulty) == journal(clean)


@pytest.mark.parametrize(("optimizer", "left"),
                         [(RANDOM_SEARCH, None), (MIPRO, None), (RANDOM_SEARCH, 4)],
                         ids=["random-search", "mipro", "during-the-test-evaluation"])
def test_an_outage_stops_the_run_and_the_rerun_after_recovery_gives_the_clean_result(
    tmp_path, proxy, optimizer, left
):
    """The outage starts half way through the clean run's requests to the server, or ``left``
    requests before its end (the test evaluation's 8 are the last)."""
    clean = tmp_path / "clean"
    assert optimize(clean, proxy().url, *optimizer).exit_code == 0
    clean_steps = journal(clean)
    requests = RunFolder(clean).read_json("result.json")["usage"]["total"]["backend_calls"]

    run = tmp_path / "run"
    outage = proxy(outage_after=requests // 2 if left is None else requests - left,
                   outage_kinds=["503", "reset", "empty-choices"])
    failed = optimize(run, outage.url, *optimizer)
    assert_lm_failure(failed, outage.url, "fake-model", "the same command again")
    status = RunFolder(run).status()
    assert status["state"] == "failed" and outage.url in status["error"]
    assert "fake-model" in status["error"]  # the LM as the CLI names it
    assert not (run / "result.json").exists()
    kept = journal(run)
    assert kept and len(kept) < len(clean_steps)
    for key, value in kept.items():  # nothing computed during the outage was kept
        assert clean_steps[key] == value, key

    outage.recover()
    rerun = optimize(run, outage.url, *optimizer)
    assert rerun.exit_code == 0, rerun.output
    assert (run / "program.json").read_bytes() == (clean / "program.json").read_bytes()
    got, want = (RunFolder(d).read_json("result.json") for d in (run, clean))
    assert (got["val_score"], got["test_score"]) == (want["val_score"], want["test_score"])
    assert got["attempt"] == 2 and got["replayed"]["steps"] == len(kept)
    assert journal(run) == clean_steps


def test_a_bench_whose_lm_is_down_exits_as_an_lm_failure_and_resumes_after_recovery(
    tmp_path, proxy
):
    outage = proxy()
    outage.down()
    args = ["bench", "--task", str(TASK_FILE), "--optimizer", "vanilla", "--model", "fake-model",
            "--base-url", outage.url, "--timeout", str(TIMEOUT), "--threads", "2",
            "--out", str(tmp_path / "bench")]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == LM_FAILURE_EXIT, failed.output
    assert "Traceback" not in failed.output and "their LM did" in failed.output
    (record,) = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert record["status"] == "failed" and record["lm_unavailable"] is True
    assert outage.url in record["error"]

    outage.recover()
    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    (record,) = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert record["status"] == "finished" and record["lm_unavailable"] is False


def test_a_dead_endpoint_fails_within_seconds(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    result = optimize(tmp_path / "run", url, *RANDOM_SEARCH)
    assert time.monotonic() - start < 5
    assert_lm_failure(result, url, "fake-model", "refused")
    assert journal(tmp_path / "run") == {}
    assert RunFolder(tmp_path / "run").status()["state"] == "failed"


def test_an_unknown_model_fails_at_the_preflight(tmp_path, server):
    server.failures = [404]
    result = optimize(tmp_path / "run", server.url, *RANDOM_SEARCH)
    assert_lm_failure(result, "HTTP 404", server.url, "fake-model")
    assert server.attempts == 1 and journal(tmp_path / "run") == {}


def test_a_server_that_never_answers_fails_within_seconds(tmp_path, proxy):
    hanging = proxy(rate=1.0, kinds=["hang"])
    start = time.monotonic()
    result = optimize(tmp_path / "run", hanging.url, *RANDOM_SEARCH)
    assert time.monotonic() - start < 5  # 3 attempts of --timeout 0.3 s
    assert_lm_failure(result, "timeout", hanging.url)


def test_max_calls_covers_the_whole_command(tmp_path, server):
    run = tmp_path / "run"
    result = optimize(run, server.url, *RANDOM_SEARCH, "--max-calls", "30")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--max-calls 30 covers the whole command" in text
    assert "1 preflight call(s) and 16 for the test evaluations" in text
    assert "13 for the optimization" in text
    usage = RunFolder(run).read_json("result.json")["usage"]
    assert usage["total"]["calls"] <= 30
    assert usage["total"]["calls"] == sum(usage[p]["calls"]
                                          for p in ("optimization", "test", "preflight"))
    # the final program's test evaluation, and the unoptimized one's unless they are the same
    assert usage["preflight"]["calls"] == 1 and usage["test"]["calls"] in (8, 16)
    assert usage["optimization"]["calls"] <= 13
    assert server.attempts == usage["total"]["backend_calls"] <= 30
    assert RunFolder(run).read_json("result.json")["test_score"] is not None

    too_small = optimize(tmp_path / "small", server.url, *RANDOM_SEARCH, "--max-calls", "9")
    assert too_small.exit_code == 1
    assert "leaves nothing for the optimization" in " ".join(too_small.output.split())


def test_the_journal_is_plain_json(tmp_path, server):
    """(The journal comparisons above compare JSON texts: make sure they are that.)"""
    run = tmp_path / "run"
    assert optimize(run, server.url, *RANDOM_SEARCH).exit_code == 0
    assert all(json.loads(v) is not None for v in journal(run).values())


def test_timeout_reaches_the_lm_of_every_command(tmp_path, server, monkeypatch):
    from cotune.lm import factory
    from cotune.runs.bench import BenchSpec

    seen = []
    real = factory.make_lm
    monkeypatch.setattr("cotune.lm.factory.make_lm",
                        lambda *a, **kw: seen.append(kw.get("timeout")) or real(*a, **kw))
    assert optimize(tmp_path / "run", server.url, *RANDOM_SEARCH).exit_code == 0
    assert seen == [TIMEOUT]
    bad = optimize(tmp_path / "bad", server.url, "--timeout", "0")
    assert bad.exit_code == 1 and "timeout must be" in " ".join(bad.output.split())

    spec = BenchSpec.from_dict({"tasks": [str(TASK_FILE)], "optimizers": ["vanilla"],
                                "timeout": 7.5})
    assert spec.run_spec(spec.cells()[0], tmp_path / "cell").timeout == 7.5


# -- MIPRO's prompt LM ----------------------------------------------------------------------


@pytest.mark.parametrize("meta", [False, True], ids=["mipro", "mipro++"])
def test_mipro_stops_when_its_prompt_lm_fails_and_the_rerun_gives_the_clean_result(
    tmp_path, meta
):
    """The proposer's LM goes down half way through its requests (grounding and proposals;
    MIPRO++ proposes lazily inside the trials): the same contract as for the task LM."""
    from optimizer_suite import AddTwo, OutageLM, arithmetic_data, exact_answer, scripted_solver
    from test_proposer import prompt_reply

    from cotune import ScriptedLM, context
    from cotune.lm import LMError
    from cotune.optimize.mipro import MIPRO
    from cotune.runs.journal import SQLiteJournal

    def run(prompt, path):
        mipro = MIPRO(exact_answer, num_instruction_candidates=3, num_demo_candidates=2,
                      num_trials=6, minibatch_size=4, full_eval_every=3, prompt_lm=prompt,
                      meta_optimize_proposer=meta, num_threads=2)
        with SQLiteJournal(path) as journal, context(lm=scripted_solver()):
            result = mipro.optimize(AddTwo(), arithmetic_data(12), arithmetic_data(6, 100),
                                    journal=journal)
            return result, {k: journal.get(k) for k in journal.keys("")}

    clean_prompt = ScriptedLM(prompt_reply, name="prompt")
    clean, clean_steps = run(clean_prompt, tmp_path / "clean.sqlite")
    prompt = OutageLM(len(clean_prompt.requests) // 2, prompt_reply, name="prompt")
    with pytest.raises(LMError):
        run(prompt, tmp_path / "run.sqlite")
    with SQLiteJournal(tmp_path / "run.sqlite") as journal:
        kept = {k: journal.get(k) for k in journal.keys("")}
    assert kept and all(clean_steps[k] == v for k, v in kept.items())
    assert not any(k.startswith(("instructions", "trial:")) for k in kept) or meta

    prompt.recover()
    again, steps = run(prompt, tmp_path / "run.sqlite")
    assert steps == clean_steps
    assert again.program.dump_state() == clean.program.dump_state()


def test_an_unusable_lm_cache_is_an_lm_failure_naming_the_file(tmp_path, server):
    run = tmp_path / "run"
    run.mkdir()
    (run / "lm_cache.sqlite").write_bytes(b"not a database " * 100)
    result = optimize(run, server.url, *RANDOM_SEARCH)
    assert_lm_failure(result, str(run / "lm_cache.sqlite"), "not usable")
    assert server.attempts == 0
