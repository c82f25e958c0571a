"""The official OpenAI and Anthropic Python SDKs against konnect's AI gateway.

Run by node/tests/ai_sdks.rs with KONNECT_BASE (the proxy's URL) and KONNECT_KEY (a consumer's
API key). Models: `gpt` (an OpenAI-type provider), `claude` (an Anthropic provider),
`gem` (a Gemini provider), `resilient` (a 429 target, then a working one). Each check prints `ok <name>`; the first
failure raises.
"""

import json
import os

import anthropic
import openai

BASE = os.environ["KONNECT_BASE"]
KEY = os.environ["KONNECT_KEY"]

oa = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
an = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
hi = [{"role": "user", "content": "Hi"}]
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print("ok", name, flush=True)


# OpenAI SDK, every kind of model, streamed and not.
for model, served_by in [("gpt", "gpt-4o-mini"), ("claude", "claude-sonnet-4-5"), ("gem", "gemini-2.5-flash")]:
    r = oa.chat.completions.create(model=model, messages=hi)
    check(f"openai {model}", r.choices[0].message.content == f"Hello from {served_by}", r)
    check(f"openai {model} usage", r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage)
    chunks = list(oa.chat.completions.create(model=model, messages=hi, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(f"openai {model} stream", text == f"Hello from {served_by}", text)
    check(f"openai {model} stream has no usage unless asked", all(c.usage is None for c in chunks))
    chunks = list(oa.chat.completions.create(model=model, messages=hi, stream=True,
                                             stream_options={"include_usage": True}))
    check(f"openai {model} stream usage when asked", chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0)

    # Tool calls, streamed and not.
    r = oa.chat.completions.create(model=model, messages=hi, tools=[weather])
    call = r.choices[0].message.tool_calls[0]
    check(f"openai {model} tool call", call.function.name == "get_weather"
          and json.loads(call.function.arguments) == {"city": "Paris"}
          and r.choices[0].finish_reason == "tool_calls", r)
    args = ""
    name = None
    finish = None
    for c in oa.chat.completions.create(model=model, messages=hi, tools=[weather], stream=True):
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    check(f"openai {model} streamed tool call", name == "get_weather" and json.loads(args) == {"city": "Paris"}
          and finish == "tool_calls", (name, args, finish))

# Anthropic SDK, both kinds of model.
for model, served_by in [("claude", "claude-sonnet-4-5"), ("gpt", "gpt-4o-mini")]:
    m = an.messages.create(model=model, max_tokens=100, messages=hi)
    check(f"anthropic {model}", m.content[0].text == f"Hello from {served_by}", m)
    check(f"anthropic {model} usage", m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage)
    with an.messages.stream(model=model, max_tokens=100, messages=hi) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    check(f"anthropic {model} stream", text == f"Hello from {served_by}", text)
    check(f"anthropic {model} stream usage", final.usage.output_tokens > 0, final.usage)
    m = an.messages.create(model=model, max_tokens=100, messages=hi, tools=[{
        "name": "get_weather", "description": "Weather in a city",
        "input_schema": weather["function"]["parameters"]}])
    use = [b for b in m.content if b.type == "tool_use"][0]
    check(f"anthropic {model} tool call", use.name == "get_weather" and use.input == {"city": "Paris"}
          and m.stop_reason == "tool_use", m)

# Fallback: the first target answers 429, the second serves.
r = oa.chat.completions.create(model="resilient", messages=hi)
check("fallback", r.choices[0].message.content == "Hello from gpt-4o-mini", r)

# Errors surface as the SDKs' own exception types.
try:
    oa.chat.completions.create(model="nope", messages=hi)
    check("openai unknown model", False, "no error")
except openai.NotFoundError as e:
    check("openai unknown model", e.status_code == 404 and "nope" in str(e))
try:
    an.messages.create(model="nope", max_tokens=10, messages=hi)
    check("anthropic unknown model", False, "no error")
except anthropic.NotFoundError as e:
    check("anthropic unknown model", e.status_code == 404)
try:
    openai.OpenAI(base_url=BASE + "/v1", api_key="knk_wrong", max_retries=0).chat.completions.create(
        model="gpt", messages=hi)
    check("openai wrong key", False, "no error")
except openai.AuthenticationError:
    check("openai wrong key", True)

models = sorted(m.id for m in oa.models.list())
check("models list", models == ["claude", "gem", "gpt", "resilient"], models)

# Embeddings: the SDK asks for base64 by default and decodes it.
e = oa.embeddings.create(model="gem", input="hello")
check("openai embeddings from gemini", [round(x, 2) for x in e.data[0].embedding] == [0.25, -0.5], e)
print("all ok", flush=True)
