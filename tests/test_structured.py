"""Structured output without a model: output schemas, the JSON adapter, one repair request,
the adapter setting, cache keys, and an OpenAI-compatible server that refuses
``response_format`` (fault injection on the fake server)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Literal

import pytest
from pydantic import BaseModel

import cotune
from cotune import (
    AdapterParseError,
    ChainOfThought,
    Example,
    InputField,
    JSONAdapter,
    OutputField,
    Predict,
    ScriptedLM,
    Signature,
    context,
    track_usage,
)
from cotune.lm import ContextOverflow, LMCache, LMRequest, LMRequestError, OpenAILM


class Inner(BaseModel):
    x: int


class Record(BaseModel):
    name: str
    inner: Inner


class Everything(Signature):
    """All the types."""

    question: str = InputField()
    text: str = OutputField(desc="free text")
    count: int = OutputField()
    price: float = OutputField()
    ok: bool = OutputField()
    choice: Literal["a", "b"] = OutputField()
    items: list[str] = OutputField()
    record: Record = OutputField()


# -- the output schema --------------------------------------------------------------------------


def test_output_schema_maps_every_type():
    schema = Everything().output_schema()
    props = schema["properties"]
    assert list(props) == ["text", "count", "price", "ok", "choice", "items", "record"]
    assert props["text"] == {"type": "string", "description": "free text"}
    assert props["count"] == {"type": "integer"}
    assert props["price"] == {"type": "number"}
    assert props["ok"] == {"type": "boolean"}
    assert props["choice"] == {"type": "string", "enum": ["a", "b"]}
    assert props["items"] == {"type": "array", "items": {"type": "string"}}
    assert props["record"]["properties"]["inner"] == {"$ref": "#/$defs/Inner"}
    assert schema["$defs"]["Inner"]["properties"]["x"]["type"] == "integer"  # hoisted to the root
    assert schema["required"] == list(props) and schema["additionalProperties"] is False


def test_chain_of_thought_schema_puts_reasoning_first_with_its_own_budget():
    think = ChainOfThought("question -> answer: int")
    options = JSONAdapter().request_options(think.signature, 100)
    props = options["response_schema"]["properties"]
    assert list(props) == ["reasoning", "answer"]
    assert props["reasoning"]["maxLength"] == 300  # 100 tokens at 3 characters each
    # room for all of the reasoning even at one token per character, and for the answer
    assert options["max_tokens"] >= 300 + 64


def test_every_text_field_is_bounded_so_the_answer_closes_within_max_tokens():
    options = JSONAdapter().request_options(Signature.parse("q -> a, b"), 40)
    lengths = [p["maxLength"] for p in options["response_schema"]["properties"].values()]
    assert lengths == [60, 60]
    assert options["max_tokens"] >= sum(lengths)
    choice = JSONAdapter().request_options(Signature.parse("q -> c: Literal['x', 'y']"), 40)
    assert choice["max_tokens"] == 40  # nothing unbounded: the budget as it is


# -- requests and cache keys ------------------------------------------------------------------


def _old_fingerprint(request: LMRequest, identity: dict) -> str:
    """The fingerprint as it was computed before requests could carry a schema."""
    data = asdict(request)
    data.pop("response_schema")
    data.pop("repair")
    data["messages"] = [dict(m) for m in request.messages]
    data["stop"] = list(request.stop)
    payload = json.dumps({"lm": identity, "request": data}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def test_a_request_without_schema_keeps_its_old_fingerprint():
    request = LMRequest(messages=({"role": "user", "content": "hi"},), max_tokens=7, seed=3)
    identity = {"backend": "x", "model": "m"}
    assert "response_schema" not in request.to_json() and "repair" not in request.to_json()
    assert request.fingerprint(identity) == _old_fingerprint(request, identity)


def test_the_schema_is_part_of_the_cache_key(tmp_path):
    lm = ScriptedLM(lambda r: "schema" if r.response_schema else "none",
                    cache=LMCache(tmp_path / "c.sqlite"))
    messages = [{"role": "user", "content": "hi"}]
    a = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    b = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    assert lm.chat(messages).text == "none"
    assert lm.chat(messages, response_schema=a).text == "schema"
    assert lm.chat(messages, response_schema=b).text == "schema"  # key order matters
    assert len(lm.requests) == 3
    assert lm.chat(messages, response_schema=a).cached


# -- the JSON adapter -------------------------------------------------------------------------


def test_demos_are_rendered_in_the_json_form_the_model_must_produce():
    think = ChainOfThought("question -> answer: int", adapter="json")
    think.demos = [Example(question="1+1?", reasoning="one and one", answer=2)
                   .with_inputs("question")]
    lm = ScriptedLM('{"reasoning": "r", "answer": 5}')
    with context(lm=lm):
        assert think(question="2+3?").answer == 5
    request = lm.requests[0]
    assert json.loads(request.messages[2]["content"]) == {"reasoning": "one and one", "answer": 2}
    assert "JSON object" in request.messages[0]["content"]
    assert request.schema["properties"]["reasoning"]["maxLength"] > 0


def test_json_adapter_parses_types_and_falls_back_to_field_markers():
    adapter = JSONAdapter()
    sig = Everything()
    answer = ('{"text": "t", "count": 3, "price": 1.5, "ok": true, "choice": "b", '
              '"items": ["x", "y"], "record": {"name": "n", "inner": {"x": 1}}}')
    parsed = adapter.parse(sig, answer)
    assert parsed["count"] == 3 and parsed["ok"] is True and parsed["choice"] == "b"
    assert parsed["record"] == Record(name="n", inner=Inner(x=1))
    assert adapter.parse(Signature.parse("q -> answer: int"), "Answer: 42") == {"answer": 42}
    with pytest.raises(AdapterParseError, match="count"):
        adapter.parse(sig, '{"text": "t"}')


def test_json_adapter_renders_demo_values_as_json_all_the_way_down():
    """A demo's typed values become JSON the way a saved program holds them (models inside a
    list too), and parse back to the same values."""

    class Nested(Signature):
        question: str = InputField()
        records: list[Record] = OutputField()

    adapter = JSONAdapter()
    values = {"records": [Record(name="n", inner=Inner(x=1))]}
    text = adapter.render_outputs(Nested(), values)
    assert json.loads(text) == {"records": [{"name": "n", "inner": {"x": 1}}]}
    assert adapter.parse(Nested(), text) == values


def test_an_unparsable_answer_gets_one_repair_request():
    replies = iter(["no idea", '{"answer": 7}'])
    lm = ScriptedLM(lambda r: next(replies))
    predict = Predict("question -> answer: int", adapter="json")
    with context(lm=lm), track_usage() as usage:
        assert predict(question="3+4?").answer == 7
    first, repair = lm.requests
    assert not first.repair and repair.repair
    assert repair.response_schema == first.response_schema  # constrained where possible
    assert repair.messages[-2] == {"role": "assistant", "content": "no idea"}
    snapshot = usage.snapshot()
    assert snapshot.calls == 2 and snapshot.repairs == 1


def test_the_repair_that_fails_too_is_the_error():
    lm = ScriptedLM("still no idea")
    with context(lm=lm), pytest.raises(AdapterParseError, match="still no idea"):
        Predict("question -> answer: int")(question="?")
    assert len(lm.requests) == 2


# -- which adapter --------------------------------------------------------------------------


def test_adapter_setting_per_predictor_context_and_backend():
    chat_lm = ScriptedLM("Answer: x")
    assert chat_lm.default_adapter == "chat"
    p = Predict("question -> answer")
    assert p.effective_adapter(chat_lm).name == "chat"
    with context(adapter="json"):
        assert p.effective_adapter(chat_lm).name == "json"
    p.adapter = "json"
    assert p.effective_adapter(chat_lm).name == "json"
    chat_lm.default_adapter = "json"  # a backend that constrains its output
    assert Predict("question -> answer").effective_adapter(chat_lm).name == "json"
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        Predict("question -> answer", adapter="nope").effective_adapter(chat_lm)


def test_an_lm_naming_no_adapter_gets_field_markers_and_an_unknown_name_is_an_error():
    class PlainModel:  # a ChatModel without a ``default_adapter``
        model = "plain"

        def __init__(self) -> None:
            self.scripted = ScriptedLM("Answer: 4")

        def chat(self, messages, **options):
            return self.scripted.chat(messages, **options)

    plain = PlainModel()
    p = Predict("question -> answer")
    assert p.effective_adapter(plain).name == "chat"
    with context(lm=plain):
        assert p(question="2 + 2?").answer == "4"
    assert plain.scripted.requests[0].messages[0]["content"].endswith("Answer: <answer>")

    misnamed = ScriptedLM("Answer: 4")
    misnamed.default_adapter = "nope"
    with context(lm=misnamed), pytest.raises(
        ValueError, match="unknown adapter 'nope'; known: chat, json"
    ):
        p(question="2 + 2?")


def test_the_adapter_setting_is_saved_with_the_program(tmp_path):
    class Two(cotune.Module):
        def __init__(self):
            self.a = Predict("question -> answer")
            self.b = Predict("question -> answer")

    program = Two()
    program.a.adapter = "json"
    cotune.save_program(program, tmp_path / "p.json")
    state = json.loads((tmp_path / "p.json").read_text())
    assert state["predictors"]["a"]["adapter"] == "json"
    assert "adapter" not in state["predictors"]["b"]  # unset: the state looks as before
    loaded = cotune.load_program(Two(), tmp_path / "p.json")
    assert loaded.a.adapter == "json" and loaded.b.adapter is None


# -- a server that refuses response_format ----------------------------------------------------


def _server_lm(server) -> OpenAILM:
    return OpenAILM("m", base_url=server.url, cache=None, max_retries=0, timeout=10.0)


def test_a_server_refusing_response_format_falls_back_once_and_remembers(
    fake_openai_server, caplog
):
    server = fake_openai_server
    server.refuse = lambda body: (400, "unknown field response_format") \
        if "response_format" in body else None
    server.answer = "Answer: 42"
    lm = _server_lm(server)
    assert lm.default_adapter == "json"
    predict = Predict("question -> answer: int", adapter="json")
    with caplog.at_level(logging.WARNING, logger="cotune.lm.openai_backend"), context(lm=lm):
        assert predict(question="q1").answer == 42
        assert predict(question="q2").answer == 42
    kinds = [body.get("response_format", {}).get("type") for body in server.requests]
    assert kinds == ["json_schema", "json_object", None, None]  # detected once, remembered
    assert len([r for r in caplog.records if "response_format" in r.getMessage()]) == 1
    assert lm.structured_mode == "none"
    assert lm.default_adapter == "chat"  # predictors now use the free-text format
    # another client of the same endpoint knows it too
    _server_lm(server).chat([{"role": "user", "content": "x"}], response_schema={"type": "object"})
    assert "response_format" not in server.requests[-1]


def test_a_server_taking_json_object_with_schema_gets_that(fake_openai_server):
    server = fake_openai_server
    server.refuse = lambda body: (422, "Input should be 'text' or 'json_object'") \
        if body.get("response_format", {}).get("type") == "json_schema" else None
    server.answer = '{"answer": 3}'
    lm = _server_lm(server)
    with context(lm=lm):
        assert Predict("question -> answer: int")(question="q").answer == 3
    assert server.requests[-1]["response_format"]["schema"]["properties"]["answer"] == {
        "type": "integer"}
    assert lm.structured_mode == "json_object" and lm.default_adapter == "json"


def test_an_error_that_is_not_about_the_format_is_raised_and_not_remembered(fake_openai_server):
    server = fake_openai_server
    server.refuse = lambda body: (400, "model m does not exist")
    lm = _server_lm(server)
    with pytest.raises(LMRequestError, match="does not exist"):
        lm.chat([{"role": "user", "content": "x"}], response_schema={"type": "object"})
    assert lm.structured_mode == "json_schema"


def test_a_server_context_error_is_a_context_overflow(fake_openai_server):
    fake_openai_server.refuse = lambda body: (
        400, "This model's maximum context length is 2048 tokens. However, you requested "
             "2078 tokens (1566 in the messages, 512 in the completion).")
    with pytest.raises(ContextOverflow, match="maximum context length"):
        _server_lm(fake_openai_server).chat([{"role": "user", "content": "x"}])
