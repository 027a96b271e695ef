"""OpenAI-compatible HTTP adapter: vLLM, SGLang, llama.cpp's server, hosted chat-completions APIs.

A follower run is m requests behind one shared prefix, so they go out concurrently (bounded by
`concurrency`) and the server's prefix cache and batching do the rest (vLLM: --enable-prefix-caching).
Transient faults (429, 5xx, read timeouts, a dropped connection, a garbled body) are retried with
exponential backoff that honours Retry-After (up to MAX_RETRY_AFTER); a prompt that outlives its
retries comes back with an error, which fails its row (retried by the next run). A request waiting
out a back-off gives its concurrency slot to the others. A server that cannot be reached (connect
refused or no connection within CONNECT_TIMEOUT, a couple of times), refuses the key or does not
serve the model stops the run at once, in seconds, with one line.

The cache identity (`model_id`) is the model name, the URL and a hash of what the server reports
about the weights behind the name (vLLM's `root`, llama.cpp's `meta`, ...) plus an optional
`revision=` from the spec, so two models served under one name never share cached replies.

The API key is read from an environment variable (OPENAI_API_KEY unless `api_key_env=` says
otherwise) and lives only in the request header: never in `model_id`, cache rows, logs or results.

Spec: `openai:MODEL@URL[?option=value&...]`, e.g.
`openai:qwen2.5-coder-1.5b@http://127.0.0.1:8080/v1?concurrency=16&tokenizer=llamacpp:qwen2.5-coder-1.5b-instruct`.
Options: api_key_env, concurrency, timeout (read timeout, seconds), retries, context (tokens), tokenizer
(a backend spec whose count_tokens is used), constrain (grammar | vllm | sglang | none: how `choices` are
sent), revision (any label of the served weights, part of the cache identity).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from promptmii.backends import Chat, Generation, GenParams, choice_grammar, choice_regex
from promptmii.errors import BackendError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_BACKOFF_SECONDS = 30.0  # the longest exponential back-off between two attempts
# A rate limit's Retry-After is honoured up to this: hosted APIs ask for up to a minute; a server asking
# for more is down for longer than a run should sit waiting on one prompt.
MAX_RETRY_AFTER = 120.0
# A request's time includes its wait in the server's queue and the prefill of its prompt: a CPU server
# behind a 10k-token ICL prompt took ~6 min for the first query (bench/follower_throughput.py). That is
# the read timeout; connecting is quick or the server is not there.
DEFAULT_TIMEOUT = 900.0
CONNECT_TIMEOUT = 5.0
CONNECT_RETRIES = 2  # a refused connection is tried again this often (a restarting server), then the run stops
# What a /v1/models entry says about the weights behind a name (vLLM, SGLang: root/parent; llama.cpp:
# meta). `created` is left out: vLLM and llama.cpp's server put the time of the request there.
IDENTITY_FIELDS = ("root", "parent", "meta")
DEFAULT_CONTEXT = 32_768  # used only when neither the server nor the spec says
CONSTRAIN_STYLES = ("grammar", "vllm", "sglang", "none")
OPTIONS = ("api_key_env", "concurrency", "timeout", "retries", "context", "tokenizer", "constrain", "revision")


class OpenAIBackend:
    """Chat completions over HTTP with bounded concurrency and retries; one instance per server+model."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 5,
        context: int | None = None,
        tokenizer: str | None = None,
        constrain: str = "grammar",
        revision: str | None = None,
    ):
        try:
            import httpx
        except ImportError:
            raise BackendError("the openai backend needs httpx (pip install httpx)") from None
        if constrain not in CONSTRAIN_STYLES:
            raise BackendError(f"constrain={constrain} is unknown; choose one of: {', '.join(CONSTRAIN_STYLES)}")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise BackendError("openai backend: concurrency must be >= 1, retries >= 0 and timeout > 0")
        self._httpx = httpx
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.constrain = constrain
        self.model_id = f"{model}@{_without_credentials(self.base_url)}"
        served = self._check_server()
        self.model_id += _identity_suffix(self.model, served, revision)
        self.context_length = context or served.get("max_model_len") or DEFAULT_CONTEXT
        self._tokenizer_spec = tokenizer
        self.token_counter = f"local:{tokenizer}" if tokenizer else "server"  # refined on first count
        self._counts: dict[str, int] = {}
        self._rng = random.Random(0)  # backoff jitter only; never affects results

    @classmethod
    def from_spec(cls, target: str) -> OpenAIBackend:
        """`MODEL@URL?options`; URL defaults to $OPENAI_BASE_URL."""
        target, _, query = target.partition("?")
        at = target.find("@http")
        model, url = (target[:at], target[at + 1 :]) if at >= 0 else (target, "")
        url = url or os.environ.get("OPENAI_BASE_URL", "")
        if not model or not url:
            raise BackendError(
                f"openai backend spec '{target}' needs MODEL@URL, e.g. openai:my-model@http://127.0.0.1:8080/v1"
            )
        options: dict[str, Any] = dict(parse_qsl(query))
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise BackendError(
                f"openai backend: unknown option(s) {', '.join(unknown)}; options are: {', '.join(OPTIONS)}"
            )
        for name, kind in (("concurrency", int), ("retries", int), ("context", int), ("timeout", float)):
            if name in options:
                try:
                    options[name] = kind(options[name])
                except ValueError:
                    raise BackendError(f"openai backend: {name}={options[name]} is not a number") from None
        return cls(model, url, **options)

    # ------------------------------------------------------------ the Backend protocol

    def generate(self, prompts: list[Chat], params: GenParams) -> list[Generation]:
        """All prompts in flight at once, at most `concurrency` at a time; results in prompt order."""
        body = self._sampling_body(params)
        return _run(self._generate_all(prompts, body))

    def label_logprobs(self, prompt: Chat, labels: list[str]) -> dict[str, float]:
        raise BackendError(
            "the openai backend cannot score labels: chat APIs do not return the log-probabilities of a given "
            "reply; use --decoding generate or constrained, or a llamacpp:/hf: follower"
        )

    def count_tokens(self, prompt: Chat) -> int:
        """The server's count (its /tokenize, else the usage of a 1-token call) or the named local tokenizer."""
        key = json.dumps(prompt, sort_keys=True)
        if key not in self._counts:
            self._counts[key] = self._count(prompt)
        return self._counts[key]

    # ------------------------------------------------------------ internals

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self._api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _check_server(self) -> dict[str, Any]:
        """GET /models: the server answers, accepts the key, and serves this model (when it lists models)."""
        httpx = self._httpx
        url = f"{self.base_url}/models"
        try:
            response = httpx.get(url, headers=self._headers(), timeout=min(self.timeout, 10.0))
        except httpx.HTTPError as e:
            raise BackendError(
                f"cannot reach the OpenAI-compatible server at {_without_credentials(self.base_url)} "
                f"({type(e).__name__}); start it or fix the URL"
            ) from None
        if response.status_code in (401, 403):
            raise BackendError(
                f"{_without_credentials(self.base_url)} refused the API key (HTTP {response.status_code}); "
                f"set ${self._api_key_env}"
            )
        if response.status_code != 200:
            log.warning("GET %s answered HTTP %s; skipping the model check", url, response.status_code)
            return {}
        try:
            listed = response.json().get("data") or []
        except (ValueError, AttributeError):
            return {}
        served = {str(m.get("id")): m for m in listed if isinstance(m, dict)}
        if served and self.model not in served:
            raise BackendError(
                f"model '{self.model}' is not served at {_without_credentials(self.base_url)}; "
                f"it serves: {', '.join(sorted(served))}"
            )
        return served.get(self.model, {})

    def _sampling_body(self, params: GenParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.choices:
            if self.constrain == "none":
                raise BackendError(
                    f"{self.model_id}: constrained decoding is off for this server (constrain=none); "
                    "use --decoding generate, or constrain=grammar|vllm|sglang"
                )
            if self.constrain == "grammar":  # llama.cpp's servers
                body["grammar"] = choice_grammar(params.choices)
            elif self.constrain == "vllm":  # new and old spellings; vLLM ignores the one it does not know
                body["structured_outputs"] = {"choice": list(params.choices)}
                body["guided_choice"] = list(params.choices)
            else:  # sglang
                body["regex"] = choice_regex(params.choices)
        return body

    async def _generate_all(self, prompts: list[Chat], body: dict[str, Any]) -> list[Generation]:
        limit = asyncio.Semaphore(self.concurrency)
        timeout = self._httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT))
        async with self._httpx.AsyncClient(timeout=timeout, headers=self._headers()) as client:
            return list(
                await asyncio.gather(*(self._complete(client, limit, {**body, "messages": p}) for p in prompts))
            )

    async def _complete(self, client: Any, limit: asyncio.Semaphore, body: dict[str, Any]) -> Generation:
        """One chat completion with retries; a fault that outlives them becomes Generation.error.

        The concurrency slot is held only while a request is in flight, never during a back-off, so one
        throttled prompt does not hold up the others. A server that cannot be connected to stops the run.
        """
        start = time.perf_counter()
        problem = ""
        refused = 0
        for attempt in range(self.retries + 1):
            delay = None
            try:
                async with limit:
                    response = await client.post(f"{self.base_url}/chat/completions", json=body)
            except (self._httpx.ConnectError, self._httpx.ConnectTimeout) as e:
                refused += 1
                if refused > CONNECT_RETRIES:
                    raise BackendError(
                        f"cannot reach the OpenAI-compatible server at {_without_credentials(self.base_url)} "
                        f"({type(e).__name__}, {refused} tries); it stopped or the network is down: restart it, "
                        "then run the same command again to resume"
                    ) from None
                problem = type(e).__name__
            except self._httpx.HTTPError as e:
                problem = (
                    f"{type(e).__name__} after {self.timeout:g} s"
                    if "Timeout" in type(e).__name__
                    else type(e).__name__
                )
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                        text = data["choices"][0]["message"]["content"] or ""
                        usage = data.get("usage") or {}
                        return Generation(
                            text,
                            int(usage.get("prompt_tokens", 0)),
                            int(usage.get("completion_tokens", 0)),
                            time.perf_counter() - start,
                        )
                    except (ValueError, KeyError, IndexError, TypeError):
                        problem = "malformed JSON in the response"
                else:
                    problem = f"HTTP {response.status_code}: {_error_message(response)}"
                    if response.status_code not in RETRY_STATUS:
                        break  # 400 (prompt too long), 404 (no such model): retrying cannot help
                    delay = _retry_after(response)
            if attempt < self.retries:
                wait = delay if delay is not None else min(MAX_BACKOFF_SECONDS, 0.5 * 2**attempt)
                wait *= 1 + 0.1 * self._rng.random()
                log.warning("%s: %s; retry %d/%d in %.1f s", self.model_id, problem, attempt + 1, self.retries, wait)
                await asyncio.sleep(wait)
        return Generation("", 0, 0, time.perf_counter() - start, error=f"{self.model_id}: {problem}")

    def _count(self, prompt: Chat) -> int:
        if self._tokenizer_spec:
            from promptmii.backends import get_backend

            return get_backend(self._tokenizer_spec).count_tokens(prompt)
        if self.token_counter in ("server", "server:/tokenize"):
            count = self._server_tokenize(prompt)
            if count is not None:
                self.token_counter = "server:/tokenize"
                return count
        self.token_counter = "server:usage"  # exact: the server's own count of a 1-token completion
        [generation] = self.generate([prompt], GenParams(max_tokens=1))
        if generation.error:
            raise BackendError(f"cannot count tokens: {generation.error}")
        return generation.prompt_tokens

    def _server_tokenize(self, prompt: Chat) -> int | None:
        """vLLM's and SGLang's POST /tokenize with chat messages (template applied); None if absent."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = self._httpx.post(
                f"{root}/tokenize",
                json={"model": self.model, "messages": prompt},
                headers=self._headers(),
                timeout=min(self.timeout, 30.0),
            )
            count = response.json().get("count") if response.status_code == 200 else None
        except (self._httpx.HTTPError, ValueError, AttributeError):
            return None
        return int(count) if isinstance(count, int) else None


def _run(coroutine: Any) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _identity_suffix(model: str, served: dict[str, Any], revision: str | None) -> str:
    """`#hash` of what identifies the weights behind `model` (server report, spec revision), or "" with a warning."""
    identity = {k: served[k] for k in IDENTITY_FIELDS if served.get(k) not in (None, "")}
    if revision:
        identity["revision"] = revision
    if not identity:
        log.warning(
            "the server says nothing about the weights behind '%s' beyond the name: its cached replies are keyed "
            "by name and URL only; add revision=... to the spec when you serve other weights under that name",
            model,
        )
        return ""
    return "#" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None  # an HTTP date; back off exponentially instead


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error or response.json().get("detail")
    except (ValueError, AttributeError):
        message = None
    return " ".join(str(message or response.text or response.reason_phrase).split())[:200]


def _without_credentials(url: str) -> str:
    """The URL without user:password@ (which may hold a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
