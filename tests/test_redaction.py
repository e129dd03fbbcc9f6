"""No secret on disk or in a report: URL credentials and API keys are redacted from every file
cotune writes and every line it prints (a real HTTP server; secrets planted in the URL, in the
environment's API key, and in a server error that echoes the request's headers)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from cotune.cli import app
from cotune.lm.redact import (
    RedactingFilter,
    is_redacted_url,
    redact,
    redact_data,
    register_secret,
)

TASK_FILE = Path(__file__).with_name("scripted_task.py")
URL_PASSWORD = "PLANTED-url-pw-7261"
API_KEY = "PLANTED-api-key-9153"
REGISTERED = "PLANTED-registered-4410"


@pytest.fixture
def echo_server(fake_openai_server):
    """The fake endpoint answering "Parity: even"; ``echo_headers(server)`` makes it refuse
    every request with a 400 whose message quotes the request's headers (Authorization too)."""
    fake_openai_server.answer = "Parity: even"
    return fake_openai_server


def echo_headers(server):
    return lambda body: (400, f"rejected; you sent the headers {server.headers[-1]}")


def _secrets() -> list[bytes]:
    userinfo = f"alice:{URL_PASSWORD}"
    return [s.encode() for s in (URL_PASSWORD, API_KEY, base64.b64encode(userinfo.encode())
                                 .decode(), base64.b64encode(API_KEY.encode()).decode())]


def _leaks(root: Path) -> list[str]:
    """Every file under ``root`` that holds one of the planted secrets."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(root)}: {s.decode()}" for s in _secrets() if s in data]
    return found


def test_no_planted_secret_reaches_a_file_or_the_terminal(tmp_path, monkeypatch, echo_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))
    port = urlsplit(echo_server.url).port
    url = f"http://alice:{URL_PASSWORD}@127.0.0.1:{port}/v1"
    lm = ["--base-url", url, "--model", "fake"]
    outputs: list[str] = []

    def cotune(*args: object):
        result = CliRunner().invoke(app, [str(a) for a in args])
        outputs.append(result.output)
        return result

    # a healthy run, its report, a bench and its report: the URL is in every config
    ok = cotune("optimize", "--task", TASK_FILE, "--optimizer", "random-search",
                "--set", "num_candidates=1", "--threads", 2, "--run-dir", "run",
                "--cache-dir", "run", *lm)
    assert ok.exit_code == 0, ok.output
    assert cotune("report", "run").exit_code == 0
    bench = ["--task", TASK_FILE, "--optimizer", "vanilla", "--val-size", 3, "--test-size", 3,
             "--threads", 2]
    assert cotune("bench", *bench, *lm, "--out", "bench").exit_code == 0
    assert cotune("report", "bench").exit_code == 0
    assert json.loads(Path("run/config.json").read_text())["model"]["base_url"] == (
        f"http://***@127.0.0.1:{port}/v1")

    # the same bench resumed from its bench.json cannot use the redacted URL: it asks for it
    again = cotune("bench", "--out", "bench")
    assert again.exit_code == 1 and "give --base-url" in again.output
    again = cotune("bench", "--out", "bench", *lm)
    assert again.exit_code == 0 and "already finished" in again.output, again.output

    # the server now rejects every request, quoting the headers it got
    echo_server.refuse = echo_headers(echo_server)
    cotune("optimize", "--task", TASK_FILE, "--optimizer", "vanilla", "--threads", 2,
           "--run-dir", "failing", "--no-cache", *lm)
    cotune("report", "failing")
    cotune("evaluate", "--task", TASK_FILE, "--split", "test", "--limit", 3, "--no-cache",
           "--out", "evaluation.json", *lm)
    cotune("bench", *bench, *lm, "--out", "failing-bench", "--cache", "off")
    cotune("report", "failing-bench")
    cotune("show", "failing")
    # without credentials in the URL the API key is sent (as a Bearer token) and echoed
    plain = ["--base-url", echo_server.url, "--model", "fake"]
    cotune("evaluate", "--task", TASK_FILE, "--split", "test", "--limit", 3, "--no-cache",
           "--out", "evaluation-plain.json", *plain)

    # the URL's credentials were really sent (as HTTP Basic auth, as the SDK sends them), and so
    # was the key
    basic = base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode()
    authorizations = [h.get("authorization", "") for h in echo_server.headers]
    assert f"Basic {basic}" in authorizations
    assert any(API_KEY in a for a in authorizations)
    written = "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json"))
    assert "you sent the headers" in written + "".join(outputs)  # the echo was recorded...
    assert "Basic ***" in written + "".join(outputs)  # ... with its secrets masked
    assert "Bearer ***" in written + "".join(outputs)
    assert _leaks(tmp_path) == []
    printed = "\n".join(outputs).encode()
    assert [s for s in _secrets() if s in printed] == []


def test_redact_masks_urls_headers_keys_and_known_values(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-PLANTED-0001")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-but-long")  # not a secret's name
    register_secret(REGISTERED)
    text = (f"GET https://bob:pw%40x@example.com/v1 with {REGISTERED} "
            "{'authorization': 'Basic Ym9iOnB3'} api_key=abc123 Bearer sk-abcdefghijklmnopqrst "
            "tok-PLANTED-0001 false-but-long; use basic arithmetic, the bearer of news; "
            "sk-abcdefghijklmnopqrstu {'Host': 'bob:pw@example.com'}")
    assert redact(text) == (
        "GET https://***@example.com/v1 with *** {'authorization': 'Basic ***'} api_key=*** "
        "Bearer *** *** false-but-long; use basic arithmetic, the bearer of news; "
        "sk-*** {'Host': '***@example.com'}")
    as_json = json.dumps({"error": f'headers {{"Authorization": "Bearer {REGISTERED}x"}}'})
    assert REGISTERED not in redact(as_json) and json.loads(redact(as_json))
    assert redact_data({"a": [f"http://u:{REGISTERED}@h/v1"], "n": 3}) == {
        "a": ["http://***@h/v1"], "n": 3}
    assert is_redacted_url(redact("http://u:p@h/v1")) and not is_redacted_url("http://h/v1")


def test_log_records_are_redacted(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "retrying %s with key %s",
                               ("http://u:pw@h/v1", API_KEY), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "retrying http://***@h/v1 with key ***"
