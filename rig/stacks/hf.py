"""The Transformers stack: batched `generate` with the top-K captured on the device, step by step.

Keeping `output_logits` for a whole generation costs vocabulary x 4 bytes per token per sequence (about 800 kB for
gpt-oss), so the rig never keeps them: a logits processor placed before any warper sees the raw logits of each step,
takes their log-softmax and top-K on the device, and keeps only those (K floats and ints per token). Every sampling
field is passed explicitly, because the gpt-oss generation config on the hub samples with top_k 50 unless told not to.

`describe()` records what Transformers resolved (dtype, attention and experts implementation, the MXFP4 path, device,
threads), each with its reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rig.errors import UserError
from rig.run.spec import to_transformers
from rig.stacks.base import Request, SequenceResult, Stack, finish_reason, truncate_at_stop
from rig.stacks.capture import RowCapture, StepRecorder, capture_kernel_for
from rig.stacks.sampling import couple_logits, record_noise
from rig.testing.tiny import PAD_TOKEN_ID

SCORE_CHUNK_TOKENS = 2048


class _Capture:
    """LogitsProcessor that records raw logprobs and top-K per step (and applies coupled noise when asked).

    Per step it records each row's log-sum-exp and exact top-K of the raw logits (rig.stacks.capture.StepRecorder:
    one C pass on the CPU, no vocabulary-sized sort, copy or dtype conversion). The chosen token of step t is read
    from input_ids at step t + 1 (and from the final sequences after the last step), so the recorded logprob is that
    of the token Transformers actually appended, whatever chose it: its raw logit minus the step's log-sum-exp. Only
    the previous step's raw logits are held (a reference to the tensor generate passed in, which Transformers'
    processors never modify in place), never the whole generation's.
    """

    def __init__(self, k: int, keys: list[tuple[str, int]], spec: Any, mode: str):
        self.k, self.keys, self.spec, self.mode = k, keys, spec, mode
        self.step = 0
        self.rec = StepRecorder(k)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.rec.chosen(input_ids[:, -1])  # the tokens that followed the previous step (none before the first)
        raw = scores.float()  # the same tensor when it is float32 already (as generate passes it)
        self.rec.step(raw)
        self.step += 1
        if self.mode == "coupled":
            s = self.spec.sampling
            keys = [(pid, sample, self.step - 1) for pid, sample in self.keys]
            return couple_logits(raw, keys, seed=s.seed, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        return scores

    def finish(self, last_tokens: Any) -> None:
        self.rec.chosen(last_tokens)


class HFStack(Stack):
    name = "hf"
    requires = ("torch", "transformers")

    def __init__(self, spec):
        super().__init__(spec)
        self.model = None
        self.device = None

    # ---- load -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        spec = self.spec
        model_dir = spec.model
        config_path = Path(model_dir) / "config.json"
        if not config_path.exists() and not _looks_like_hub_id(model_dir):
            raise UserError(f"unknown model {model_dir!r}: not a local directory with config.json, nor a hub id")

        if spec.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            self.resolve("device", dev, "CUDA available" if dev == "cuda" else "no CUDA device; running on the CPU")
        else:
            dev = self.resolve("device", spec.device, "requested")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {dev!r} requested but torch sees no CUDA device")
        self.device = torch.device(dev)
        self.resolve("capture_kernel", *capture_kernel_for(self.device.type, spec.logprobs))
        dtype = getattr(torch, spec.dtype)
        self.resolve("dtype", spec.dtype, "requested (activations and non-quantized weights)")

        kwargs: dict[str, Any] = {"dtype": dtype, "revision": spec.revision}
        if spec.attention == "auto":
            kwargs["attn_implementation"] = self.resolve(
                "attention",
                "eager",
                "gpt-oss needs attention sinks: Transformers refuses sdpa for it, and flash/flex kernels come from the "
                "hub or need CUDA; eager is the one implementation that runs everywhere",
            )
        else:
            kwargs["attn_implementation"] = spec.attention
        if spec.experts != "auto":
            kwargs["experts_implementation"] = spec.experts

        qcfg = _read_quant_config(model_dir)
        quant_reason = self._plan_quantization(qcfg, kwargs)

        t0 = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        except OSError as exc:
            raise UserError(f"cannot load model {model_dir!r}: {str(exc).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self._extra["load_s"] = round(time.perf_counter() - t0, 3)

        cfg = model.config
        attn = getattr(cfg, "_attn_implementation", kwargs["attn_implementation"])
        if spec.attention != "auto":
            self.resolve("attention", attn, "requested")
        exp = getattr(cfg, "_experts_implementation", None) or getattr(cfg, "_experts_implementation_internal", None)
        self.resolve(
            "experts",
            exp,
            "requested"
            if spec.experts != "auto"
            else "Transformers' default: grouped_mm where torch can dispatch it on this device, else the eager loop",
        )
        self._record_quantization(qcfg, quant_reason)
        self.resolve("threads", torch.get_num_threads(), "torch's intra-op thread count (CPU reductions depend on it)")
        self.resolve("padding", "left", "batched generation pads prompts on the left; the attention mask hides pads")
        s = spec.sampling
        if s.greedy:
            mode, why = "greedy", "temperature 0"
        elif s.use_coupled:
            mode, why = "coupled", "temperature > 0: shared Gumbel noise keyed by (seed, prompt, sample, position)"
        else:
            mode, why = "native", "temperature > 0 with coupled sampling off: Transformers' own seeded sampler"
        self._mode = self.resolve("sampler", mode, why)
        record_noise(self, mode)
        self._extra.update(
            {
                "model_class": type(model).__name__,
                "n_parameters": int(sum(p.numel() for p in model.parameters())),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                "generation": to_transformers(spec),
                "batch_size": spec.batch_size,
            }
        )
        if self.device.type == "cuda":
            self._extra["gpu"] = torch.cuda.get_device_name(self.device)

    def _plan_quantization(self, qcfg: dict[str, Any] | None, kwargs: dict[str, Any]) -> str:
        q = self.spec.quantization
        if qcfg is None:
            if q == "mxfp4":
                raise UserError(f"quantization mxfp4 requested but {self.spec.model} has no quantization_config")
            return "the checkpoint has no quantization_config: weights load in the requested dtype"
        method = qcfg.get("quant_method")
        if method == "mxfp4" and q in ("dequantize", "mxfp4"):
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=(q == "dequantize"))
            return "requested"
        if q == "none":
            raise UserError(f"quantization none requested but the checkpoint is quantized ({method})")
        return f"the checkpoint's quantization_config ({method}); Transformers chooses the path"

    def _record_quantization(self, qcfg: dict[str, Any] | None, reason: str) -> None:
        if qcfg is None:
            self.resolve("quantization", "none", reason)
            return
        live = getattr(self.model.config, "quantization_config", None)
        dequantized = bool(getattr(live, "dequantize", False)) or live is None
        if dequantized:
            self.resolve(
                "quantization",
                "mxfp4 dequantized to " + self.spec.dtype,
                reason
                + "; MXFP4 weights were dequantized at load (no MXFP4 kernels here: CPU, old Triton, no `kernels` "
                "package, or dequantize requested). Dequantized values equal the MXFP4 values exactly.",
            )
        else:
            self.resolve("quantization", "mxfp4 kernels", reason + "; MXFP4 kernels in use")

    # ---- generate ---------------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[SequenceResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        spec, s = self.spec, self.spec.sampling
        k = spec.logprobs
        prompts = [list(r.prompt.token_ids) for r in requests]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen_cfg = GenerationConfig(**to_transformers(spec), pad_token_id=PAD_TOKEN_ID)
        capture = _Capture(k, [(r.prompt.id, r.sample) for r in requests], spec, self._mode)
        if self._mode == "native":
            key = "|".join(f"{r.prompt.id}:{r.sample}" for r in requests)
            torch.manual_seed(int.from_bytes(hashlib.sha256(f"{s.seed}|{key}".encode()).digest()[:7], "little"))
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([capture]),
            )
            new = out[:, width:]
            capture.finish(new[:, -1])
            steps = new.shape[1]
            lp, tid, tlp = capture.rec.results()
            if not steps:
                lp = np.zeros((len(requests), 0), np.float32)
                tid, tlp = np.zeros((len(requests), 0, k), np.int32), np.zeros((len(requests), 0, k), np.float32)
        elapsed = time.perf_counter() - t0
        new_np = new.cpu().numpy()
        results = []
        for i, r in enumerate(requests):
            n = truncate_at_stop(new_np[i], s.stop_token_ids)
            toks = new_np[i, :n]
            results.append(
                SequenceResult(
                    prompt_id=r.prompt.id,
                    sample=r.sample,
                    token_ids=toks,
                    logprobs=lp[i, :n],
                    topk_ids=tid[i, :n] if k else np.zeros((n, 0), np.int32),
                    topk_logprobs=tlp[i, :n] if k else np.zeros((n, 0), np.float32),
                    finish_reason=finish_reason(toks, s.stop_token_ids),
                    timings={"batch_s": round(elapsed, 6), "batch_size": len(requests), "batch_steps": int(steps)},
                )
            )
        return results

    # ---- score ------------------------------------------------------------------------------------------------
    def score(self, requests: list[Request]) -> list[SequenceResult]:
        """Teacher-forced: one forward pass per sequence (chunked through the KV cache past 2048 tokens)."""
        import torch

        k = self.spec.logprobs
        rows = RowCapture(k)
        results = []
        for r in requests:
            t0 = time.perf_counter()
            prompt = list(r.prompt.token_ids)
            cont = [int(t) for t in r.continuation]
            seq = torch.tensor([prompt + cont], dtype=torch.long, device=self.device)
            lps, tids, tlps = [], [], []
            cache = None
            with torch.inference_mode():
                for start in range(0, seq.shape[1], SCORE_CHUNK_TOKENS):
                    chunk = seq[:, start : start + SCORE_CHUNK_TOKENS]
                    out = self.model(input_ids=chunk, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    # Row j of this chunk (absolute position start + j) predicts token start + j + 1.
                    lo = max(len(prompt) - 1 - start, 0)
                    hi = min(seq.shape[1] - 1 - start, chunk.shape[1])
                    if lo >= hi:
                        continue
                    logits = out.logits[0, lo:hi].float()
                    norm, top_lps, top_ids = rows(logits)
                    target = seq[0, start + lo + 1 : start + hi + 1]
                    lps.append(norm.logprobs(logits.gather(-1, target[:, None]).squeeze(-1)))
                    if k:
                        tids.append(top_ids.to(torch.int32))
                        tlps.append(top_lps)
            n = len(cont)
            results.append(
                SequenceResult(
                    prompt_id=r.prompt.id,
                    sample=r.sample,
                    token_ids=np.asarray(cont, np.int32),
                    logprobs=torch.cat(lps).cpu().numpy() if n else np.zeros(0),
                    topk_ids=torch.cat(tids).cpu().numpy() if (k and n) else np.zeros((n, k), np.int32),
                    topk_logprobs=torch.cat(tlps).cpu().numpy() if (k and n) else np.zeros((n, k), np.float32),
                    finish_reason="scored",
                    timings={"score_s": round(time.perf_counter() - t0, 6)},
                )
            )
        return results

    def close(self) -> None:
        self.model = None


def _read_quant_config(model: str) -> dict[str, Any] | None:
    path = Path(model) / "config.json"
    if not path.exists():
        return None  # a hub id: Transformers reads it; recorded after load
    return json.loads(path.read_text()).get("quantization_config")


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not Path(model).exists()
