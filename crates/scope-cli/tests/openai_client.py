"""The official `openai` Python client against `scope serve` (driven by tests/serve_openai.rs).

usage:
    openai_client.py URL            completions and chat completions, plain, streamed and steered
    openai_client.py URL auth KEY   a wrong key gets AuthenticationError (401), KEY works

Prints one JSON object on stdout; any unexpected exception ends the script with exit 1.
"""

import json
import sys

import openai

PROMPT = "Would you be able to travel through time using a wormhole?"
STEERING = [{"latent": 5, "magnitude": 60.0}]


def client(url, key):
    # No retries: a refused request must show as one error, not as three attempts.
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120.0)


def usage(u):
    if u is None:
        return None
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def completion(c, model, **extra):
    r = c.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=12, **extra)
    assert r.object == "text_completion", r.object
    assert len(r.choices) == 1, r.choices
    return {
        "text": r.choices[0].text,
        "finish_reason": r.choices[0].finish_reason,
        "usage": usage(r.usage),
        "model": r.model,
    }


def completion_stream(c, model, **extra):
    stream = c.completions.create(
        model=model, prompt=PROMPT, temperature=0, max_tokens=12, stream=True, **extra
    )
    text, finish_reason, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "text_completion", chunk.object
        for choice in chunk.choices:
            text += choice.text or ""
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    return {"text": text, "finish_reason": finish_reason, "chunks": chunks}


def chat(c, model):
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi"}],
        temperature=0,
        max_tokens=8,
    )
    assert r.object == "chat.completion", r.object
    assert len(r.choices) == 1, r.choices
    message = r.choices[0].message
    assert message.role == "assistant", message.role
    return {
        "text": message.content,
        "finish_reason": r.choices[0].finish_reason,
        "usage": usage(r.usage),
        "model": r.model,
    }


def chat_stream(c, model):
    stream = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi"}],
        temperature=0,
        max_tokens=8,
        stream=True,
    )
    text, finish_reason, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk.object
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    return {"text": text, "finish_reason": finish_reason, "chunks": chunks}


def full(url):
    c = client(url, "unused")
    models = [m.id for m in c.models.list()]
    assert models, "GET /v1/models listed no model"
    model = models[0]
    steered = {"extra_body": {"steering": STEERING}}
    return {
        "models": models,
        "completion": completion(c, model),
        "completion_stream": completion_stream(c, model),
        "steered": completion(c, model, **steered),
        "steered_stream": completion_stream(c, model, **steered),
        "chat": chat(c, model),
        "chat_stream": chat_stream(c, model),
    }


def refused(call):
    """What a call that should fail with 401 raised."""
    try:
        call()
    except openai.AuthenticationError as e:
        return {"error": "AuthenticationError", "status": e.status_code, "message": str(e)}
    except openai.APIStatusError as e:
        return {"error": type(e).__name__, "status": e.status_code, "message": str(e)}
    return {"error": None, "status": None, "message": "the call succeeded"}


def auth(url, key):
    wrong = client(url, key + "-wrong")
    right = client(url, key)
    models = [m.id for m in right.models.list()]
    model = models[0]
    return {
        "wrong_models": refused(lambda: wrong.models.list()),
        "wrong_completion": refused(lambda: completion(wrong, model)),
        "wrong_chat": refused(lambda: chat(wrong, model)),
        "models": models,
        "completion": completion(right, model),
        "chat": chat(right, model),
    }


def main(argv):
    if len(argv) == 2:
        out = full(argv[1])
    elif len(argv) == 4 and argv[2] == "auth":
        out = auth(argv[1], argv[3])
    else:
        sys.exit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
