"""The OpenAI-compatible stack: any endpoint that speaks /v1/completions (vLLM, SGLang, llama.cpp, hosted providers).

The rig sends the harmony token IDs it rendered as the prompt (`/v1/completions` accepts a list of token IDs), asks for
`logprobs=K` and, on vLLM, `return_tokens_as_token_ids` so that every generated token comes back as an ID rather than
as text. Scoring uses vLLM's `prompt_logprobs` extension over prompt + continuation, or the standard `echo` + `logprobs`
where a server lacks it. A server that accepts only chat messages gets the prompt's messages through
/v1/chat/completions; describe() then records that the prompt tokens were not under the rig's control.

Only the standard library is used (http.client, a thread pool): requests run `spec.concurrency` at a time, each with
`spec.request_timeout_s`, and are retried with capped exponential backoff and jitter on 429, 5xx, timeouts and
connection errors. Retries are counted per sequence (completions timings) and in total (describe). The API key is read
from the environment variable that `spec.api_key_env` names, at request time, and is never stored or printed.

Batching: the runner's batch (`spec.batch_size`, one tokens/ part) is the unit of failure. When an endpoint dies, the
batch in flight fails with a one-line UserError after the retries, and every part already written stays intact for
`rig run --resume`. Keep batch_size a small multiple of concurrency (the default 8 and 8): a batch waits for its
slowest request, and a failure loses at most one batch.

Engine arguments (`--engine-arg NAME=VALUE`): api (auto|completions|chat), max_retries (5), backoff_base_s (0.5),
backoff_cap_s (8.0), server_coupled (false; true when the server runs `--logits-processors
rig.stacks.vllm_coupled:RigCoupledLogitsProcessor`, which makes coupled sampling possible through `vllm_xargs`).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from rig.errors import UserError
from rig.run.spec import RunSpec, to_openai
from rig.stacks.base import Request, SequenceResult, Stack, finish_reason
from rig.stacks.sampling import COUPLED_PROCESSOR, coupled_extra_args, record_noise, request_seed

DEFAULTS = {"api": "auto", "max_retries": 5, "backoff_base_s": 0.5, "backoff_cap_s": 8.0, "server_coupled": False}
RETRY_STATUSES = (429, 500, 502, 503, 504)


class EndpointError(Exception):
    """One failed attempt: retryable (429, 5xx, timeout, connection) or not."""

    def __init__(self, reason: str, retryable: bool, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after_s = reason, retryable, retry_after_s


class _Http:
    """Keep-alive http.client connections, one per thread, closed together."""

    def __init__(self, base_url: str, timeout_s: float):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"base_url {base_url!r}: expected http(s)://host[:port]/v1")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it is new."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, False
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout_s)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, True

    def request(
        self, method: str, path: str, body: dict | None, headers: dict[str, str], *, absolute: bool = False
    ) -> tuple[int, dict, bytes]:
        """(status, headers, body bytes) for prefix + path (or path alone when absolute); raises EndpointError for
        timeouts and connection errors. A kept-alive connection that the server closed meanwhile is reopened once
        without counting as a failure."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Accept": "application/json", **headers}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        target = path if absolute else self.prefix + path
        while True:
            conn, fresh = self._conn()
            try:
                conn.request(method, target, body=data, headers=hdrs)
                resp = conn.getresponse()
                payload = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
            except TimeoutError:
                self._drop(conn)
                raise EndpointError(f"timed out after {self.timeout_s:g} s", True) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(conn)
                if not fresh:
                    continue  # a stale keep-alive connection, not a server failure
                raise EndpointError(f"{type(exc).__name__}: {exc}".rstrip(": "), True) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                raise EndpointError(f"{type(exc).__name__}: {exc}".rstrip(": "), True) from None

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _token_id(token: str) -> int:
    """A token from a logprobs list as an ID: vLLM's "token_id:123" form, else the harmony vocabulary's ID, else -1."""
    if token.startswith("token_id:"):
        return int(token[9:])
    from rig.harmony import encoding as harmony_encoding

    ids = harmony_encoding().encode(token, allowed_special="all")
    return int(ids[0]) if len(ids) == 1 else -1


def _topk(entries: dict[int, float], chosen: int, k: int, order: dict[int, int] | None = None) -> tuple[list, list]:
    """Exactly K (id, logprob) pairs, best first, from a server's top-K dict (which also holds the chosen token when it
    is outside the top-K: then it has K + 1 entries and the chosen one is the extra)."""
    items = [(t, lp) for t, lp in entries.items() if not (len(entries) > k and t == chosen)]
    if order is not None:
        items.sort(key=lambda x: order.get(x[0], 1 << 30))
    else:
        items.sort(key=lambda x: -x[1])
    items = items[:k]
    return [t for t, _ in items], [lp for _, lp in items]


class OpenAIStack(Stack):
    """An OpenAI-compatible endpoint; see the module docstring for the protocol and the engine arguments."""

    name = "openai"
    local_model = False
    gpu_telemetry = False
    in_process_torch = False

    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self.options = {**DEFAULTS, **dict(spec.engine_args)}
        unknown = sorted(set(self.options) - set(DEFAULTS))
        if unknown:
            raise UserError(f"openai stack: unknown engine argument {unknown[0]!r} (known: {', '.join(DEFAULTS)})")
        self.base_url = (spec.base_url or "").rstrip("/")
        self.model = spec.served_model or spec.model
        self._http: _Http | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "retries": 0, "failed": 0}

    # ---- transport --------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        name = self.spec.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise UserError(f"environment variable {name} (api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}

    def _call(self, method: str, path: str, body: dict | None = None, tries: int | None = None) -> tuple[Any, int]:
        """(parsed JSON, retries used); retries with backoff; UserError after the last try or on a 4xx answer."""
        if self._http is None:
            raise RuntimeError("the openai stack is not loaded (load() first)")
        tries = tries or int(self.options["max_retries"]) + 1
        base, cap = float(self.options["backoff_base_s"]), float(self.options["backoff_cap_s"])
        url = self.base_url + path
        last: EndpointError | None = None
        for attempt in range(tries):
            try:
                status, headers, data = self._http.request(method, path, body, self._headers())
                if status == 200:
                    self._count(retries=attempt)
                    return json.loads(data), attempt
                if status in RETRY_STATUSES:
                    raise EndpointError(f"HTTP {status}", True, _retry_after_s(headers.get("retry-after")))
                raise UserError(f"endpoint {url} refused the request: HTTP {status}: {_server_message(data)}")
            except EndpointError as exc:
                last = exc
            if attempt + 1 < tries:
                delay = min(cap, base * 2**attempt)
                delay = delay / 2 + random.uniform(0, delay / 2)  # equal jitter
                if last.retry_after_s is not None:
                    delay = min(cap, max(delay, last.retry_after_s))
                time.sleep(delay)
        self._count(retries=tries - 1, failed=1)
        if last is None:
            raise RuntimeError("no request was made (tries < 1)")
        verb = "failed" if last.reason.startswith("HTTP") else "unreachable"
        raise UserError(f"endpoint {url} {verb} after {tries} tries: {last.reason}")

    def _count(self, retries: int = 0, failed: int = 0) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts["retries"] += retries
            self._counts["failed"] += failed

    # ---- load -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        spec = self.spec
        if not self.base_url:
            raise UserError("the openai stack needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if not self.model:
            raise UserError("the openai stack needs the served model name (--model or served_model)")
        self._http = _Http(self.base_url, spec.request_timeout_s)
        self._headers()  # a missing key variable fails now, not mid-run
        models, _ = self._call("GET", "/models")
        ids = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
        if ids and self.model not in ids:
            raise UserError(f"endpoint {self.base_url} does not serve {self.model!r} (it serves: {', '.join(ids)})")
        self._extra["server"] = {"models": models, "version": self._server_version()}
        self._extra.update({"base_url": self.base_url, "served_model": self.model, "api_key_env": spec.api_key_env})
        self._resolve_api()
        self._resolve_sampler()
        self.resolve("concurrency", spec.concurrency, "spec.concurrency: requests in flight at once")
        self.resolve(
            "retries",
            {k: self.options[k] for k in ("max_retries", "backoff_base_s", "backoff_cap_s")},
            "429, 5xx, timeouts and connection errors are retried with capped exponential backoff and jitter",
        )
        self.resolve("request_timeout_s", spec.request_timeout_s, "spec.request_timeout_s, per socket operation")
        self._extra["batch_size"] = spec.batch_size
        self._pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="rig-openai")

    def _server_version(self) -> str | None:
        """vLLM's /version (at the server root, beside /v1), when the server has one; one try, no retries."""
        if self._http is None:
            raise RuntimeError("the openai stack is not loaded (load() first)")
        root = self._http.prefix.removesuffix("/v1")
        try:
            status, _, data = self._http.request("GET", root + "/version", None, {}, absolute=True)
            return json.loads(data).get("version") if status == 200 else None
        except (EndpointError, ValueError, AttributeError):
            return None

    def _resolve_api(self) -> None:
        api = self.options["api"]
        if api not in ("auto", "completions", "chat"):
            raise UserError(f"openai stack: api must be auto, completions or chat, not {api!r}")
        if api == "chat":
            self._api = "chat"
            reason = "requested (--engine-arg api=chat)"
        else:
            probe = {"model": self.model, "prompt": [0], "max_tokens": 1, "temperature": 0, "logprobs": 1}
            probe["return_tokens_as_token_ids"] = True
            try:
                answer, _ = self._call("POST", "/completions", probe)
                tokens = answer["choices"][0]["logprobs"]["tokens"]
                ids_native = bool(tokens) and str(tokens[0]).startswith("token_id:")
                self._api = "completions"
                reason = (
                    "the endpoint accepts token-ID prompts on /v1/completions"
                    + ("" if api == "auto" else " (requested)")
                    + (
                        "; tokens come back as IDs"
                        if ids_native
                        else "; tokens come back as text and are mapped to "
                        "IDs through the harmony vocabulary (-1 where a string is not one token)"
                    )
                )
            except (UserError, KeyError, IndexError, TypeError) as exc:
                if api == "completions":
                    raise UserError(f"endpoint {self.base_url} cannot do token-ID completions: {exc}") from None
                self._api = "chat"
                reason = f"/v1/completions with token IDs failed ({str(exc).splitlines()[0]}); fell back to chat"
        self.resolve("api", "completions" if self._api == "completions" else "chat", reason)
        if self._api == "completions":
            self.resolve("prompt_tokens", "rig", "the rig's harmony token IDs are sent as the prompt")
        else:
            self.resolve(
                "prompt_tokens",
                "server",
                "chat messages: the server renders the prompt with its own template, so the prompt tokens were not "
                "under the rig's control (and may differ from the harmony IDs in prompts.jsonl)",
            )
        self._score_mode = "prompt_logprobs" if self._api == "completions" else None

    def _resolve_sampler(self) -> None:
        s = self.spec.sampling
        if s.greedy:
            mode, why = "greedy", "temperature 0"
        elif s.use_coupled and self.options["server_coupled"]:
            mode, why = (
                "coupled",
                (
                    f"the server runs {COUPLED_PROCESSOR} (server_coupled=true): the rig's shared Gumbel noise travels "
                    "in vllm_xargs and the request runs at temperature 0"
                ),
            )
        elif s.use_coupled:
            mode, why = (
                "native",
                (
                    "coupled sampling was asked for, but an endpoint applies the rig's shared noise only when it runs "
                    f"{COUPLED_PROCESSOR} (then pass --engine-arg server_coupled=true); the server's own seeded "
                    "sampler is used instead"
                ),
            )
        else:
            mode, why = "native", "temperature > 0 with coupled sampling off: the server's sampler, per-request seed"
        self._mode = self.resolve("sampler", mode, why)
        record_noise(self, mode, "generated by the server's rig.stacks.vllm_coupled, which must be this rig version's")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        with self._lock:
            d["requests"] = dict(self._counts)
        return d

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._http is not None:
            self._http.close()

    # ---- generate ---------------------------------------------------------------------------------------------
    def _map(self, fn: Any, requests: list[Request]) -> list[Any]:
        if self._pool is None:
            raise RuntimeError("the openai stack is not loaded (load() first)")
        futures = [self._pool.submit(fn, r) for r in requests]
        errors = []
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as exc:  # noqa: BLE001 - wait for all, then raise the first
                errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def _body(self, r: Request) -> dict[str, Any]:
        s = self.spec.sampling
        seed = request_seed(s.seed, r.prompt.id, r.sample)
        body = to_openai(self.spec, seed if self._mode == "native" else None)
        if self._mode == "coupled":
            body.update(temperature=0.0, top_p=1.0, top_k=-1)
            body["vllm_xargs"] = coupled_extra_args(s.seed, r.prompt.id, r.sample, s.temperature, s.top_k, s.top_p)
        body = {k: v for k, v in body.items() if v is not None}
        body["model"] = self.model
        return body

    def generate(self, requests: list[Request]) -> list[SequenceResult]:
        t0 = time.perf_counter()
        fn = self._complete if self._api == "completions" else self._chat
        results = self._map(fn, requests)
        batch_s = round(time.perf_counter() - t0, 6)
        for res in results:
            res.timings["batch_s"] = batch_s
            res.timings["batch_size"] = len(requests)
        return results

    def _complete(self, r: Request) -> SequenceResult:
        body = self._body(r)
        body["prompt"] = list(r.prompt.token_ids)
        body["return_token_ids"] = True
        t0 = time.perf_counter()
        answer, retries = self._call("POST", "/completions", body)
        latency = time.perf_counter() - t0
        choice = answer["choices"][0]
        lp = choice.get("logprobs") or {}
        tokens = [_token_id(t) for t in lp.get("tokens", [])]
        if choice.get("token_ids") is not None and len(choice["token_ids"]) == len(tokens):
            tokens = [int(t) for t in choice["token_ids"]]
        token_lps = [(-np.inf if v is None else float(v)) for v in lp.get("token_logprobs", [])]
        tops = lp.get("top_logprobs") or [None] * len(tokens)
        return self._result(r, tokens, token_lps, tops, latency, retries, choice.get("finish_reason"))

    def _result(
        self, r: Request, tokens: list[int], lps: list[float], tops: list[Any], latency: float, retries: int, why: Any
    ) -> SequenceResult:
        k = self.spec.logprobs
        tid = np.full((len(tokens), k), -1, np.int32)
        tlp = np.full((len(tokens), k), -np.inf, np.float32)
        for i, (tok, top) in enumerate(zip(tokens, tops, strict=True)):
            if not top:
                continue
            ids, vals = _topk({_token_id(t): float(v) for t, v in top.items()}, tok, k)
            tid[i, : len(ids)] = ids
            tlp[i, : len(vals)] = vals
        stop = self.spec.sampling.stop_token_ids
        toks = np.asarray(tokens, np.int32)
        return SequenceResult(
            prompt_id=r.prompt.id,
            sample=r.sample,
            token_ids=toks,
            logprobs=np.asarray(lps, np.float32),
            topk_ids=tid,
            topk_logprobs=tlp,
            finish_reason=finish_reason(toks, stop),
            timings={"latency_s": round(latency, 6), "retries": retries, "server_finish_reason": why},
        )

    def _chat(self, r: Request) -> SequenceResult:
        messages = r.prompt.source.get("messages")
        if messages is None:
            text = r.prompt.source.get("text")
            if text is None:
                raise UserError(f"prompt {r.prompt.id}: token-only prompts cannot be sent to a chat-only endpoint")
            messages = [{"role": "user", "content": text}]
        body = self._body(r)
        for key in ("logprobs", "prompt", "echo"):
            body.pop(key, None)
        body.update(messages=messages, logprobs=True, top_logprobs=self.spec.logprobs)
        if r.prompt.source.get("reasoning_effort"):
            body["reasoning_effort"] = r.prompt.source["reasoning_effort"]
        t0 = time.perf_counter()
        answer, retries = self._call("POST", "/chat/completions", body)
        latency = time.perf_counter() - t0
        choice = answer["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        tokens = [_token_id(c["token"]) for c in content]
        lps = [float(c["logprob"]) for c in content]
        tops = [{t["token"]: t["logprob"] for t in c.get("top_logprobs", [])} for c in content]
        return self._result(r, tokens, lps, tops, latency, retries, choice.get("finish_reason"))

    # ---- score ------------------------------------------------------------------------------------------------
    def score(self, requests: list[Request]) -> list[SequenceResult]:
        """Teacher-forced: prompt_logprobs (vLLM) or echo + logprobs over prompt + continuation; one batch per call."""
        if self._api != "completions":
            raise UserError(f"endpoint {self.base_url} accepts only chat messages: scoring needs token-ID completions")
        t0 = time.perf_counter()
        results = self._map(self._score_one, requests)
        batch_s = round(time.perf_counter() - t0, 6)
        self.resolve(
            "scoring",
            self._score_mode,
            "vLLM's prompt_logprobs extension (raw, top-K with ranks)"
            if self._score_mode == "prompt_logprobs"
            else "echo + logprobs (the server has no prompt_logprobs)",
        )
        for res in results:
            res.timings["batch_s"] = batch_s
        return results

    def _score_one(self, r: Request) -> SequenceResult:
        k = self.spec.logprobs
        cont = [int(t) for t in r.continuation]
        n = len(cont)
        if n == 0:
            return SequenceResult(r.prompt.id, r.sample, [], [], np.zeros((0, k)), np.zeros((0, k)), "scored", {})
        ids = list(r.prompt.token_ids) + cont
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "seed": 0}
        body.update(return_tokens_as_token_ids=True, skip_special_tokens=False)
        t0 = time.perf_counter()
        retries = 0
        rows: list[tuple[int, float, dict[int, float], dict[int, int] | None]] = []
        if self._score_mode == "prompt_logprobs":
            answer, retries = self._call("POST", "/completions", {**body, "prompt_logprobs": k})
            plp = answer["choices"][0].get("prompt_logprobs")
            if plp is None:
                with self._lock:
                    self._score_mode = "echo"
            else:
                for tok, entry in zip(cont, plp[-n:], strict=True):
                    entry = {int(t): v for t, v in entry.items()}
                    rank = {t: int(v.get("rank") or 1 << 30) for t, v in entry.items()}
                    rows.append(
                        (tok, float(entry[tok]["logprob"]), {t: float(v["logprob"]) for t, v in entry.items()}, rank)
                    )
        if self._score_mode == "echo":
            answer, more = self._call("POST", "/completions", {**body, "echo": True, "logprobs": k})
            retries += more
            lp = answer["choices"][0]["logprobs"]
            tokens = lp["tokens"][: len(ids)][-n:]
            token_lps = lp["token_logprobs"][: len(ids)][-n:]
            tops = lp["top_logprobs"][: len(ids)][-n:]
            for tok, tok_s, v, top in zip(cont, tokens, token_lps, tops, strict=True):
                if _token_id(tok_s) not in (tok, -1):
                    raise UserError(f"endpoint {self.base_url} echoed other tokens than it was sent ({r.prompt.id})")
                rows.append((tok, float(v), {_token_id(t): float(x) for t, x in (top or {}).items()}, None))
        tid = np.full((n, k), -1, np.int32)
        tlp = np.full((n, k), -np.inf, np.float32)
        for i, (tok, _, top, rank) in enumerate(rows):
            a, b = _topk(top, tok, k, rank)
            tid[i, : len(a)] = a
            tlp[i, : len(b)] = b
        return SequenceResult(
            prompt_id=r.prompt.id,
            sample=r.sample,
            token_ids=np.asarray(cont, np.int32),
            logprobs=np.asarray([x[1] for x in rows], np.float32),
            topk_ids=tid,
            topk_logprobs=tlp,
            finish_reason="scored",
            timings={"latency_s": round(time.perf_counter() - t0, 6), "retries": retries},
        )


def _retry_after_s(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _server_message(data: bytes) -> str:
    """The first line of a server's error answer (OpenAI's {"error": {"message"}} or plain text), at most 300 chars."""
    try:
        obj = json.loads(data)
        msg = obj.get("error", {}).get("message") if isinstance(obj.get("error"), dict) else obj.get("error")
        msg = msg or obj.get("message") or obj.get("detail") or data.decode(errors="replace")
    except (ValueError, AttributeError):
        msg = data.decode(errors="replace")
    lines = str(msg).strip().splitlines()
    return (lines[0] if lines else "")[:300]
