"""llama-cpp-python adapter: the CPU default, running the bundled GGUF models or any .gguf file.

Prompts are rendered with the model's own chat template (from the GGUF) and tokenized here, so the
tokens we count are exactly the tokens we run. The high-level API runs one sequence at a time but
keeps the KV cache of the previous prompt: running all m queries of one instruction back to back
means the shared prefix is evaluated once (measured: 7.1 s -> 0.23 s per call for a ~790-token prefix). The shared prefix
is also tokenized once per batch, not once per query (22 ms per 10k tokens, ~7% of a 0.5B query).

Control tokens (<|im_start|>, <|im_end|>, ...) come only from the chat template. Message contents are
data: they are tokenized as plain text, so an input that contains "<|im_end|>" cannot end the turn.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptmii import models
from promptmii.backends import Chat, Generation, GenParams, choice_grammar
from promptmii.errors import BackendError, ModelFileError

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX_CHARS = 200  # below this, tokenizing the prefix again costs nothing worth saving
MAX_CONTEXT = 32_768  # the bundled Qwen models' trained context; also the paper's serving context
# Stand-ins for message contents while the template renders: private-use characters no template
# alters and no tokenizer treats as control tokens.
_MARK = "\ue000{}\ue001"


@dataclass(frozen=True)
class Rendered:
    """A chat prompt rendered by the template, with where each message's content sits in the text."""

    text: str
    spans: tuple[tuple[int, int], ...] = ()  # (start, end) of message contents: data, never control tokens

    def head(self, cut: int) -> Rendered:
        return Rendered(self.text[:cut], tuple((a, min(b, cut)) for a, b in self.spans if a < cut))

    def tail(self, cut: int) -> Rendered:
        return Rendered(self.text[cut:], tuple((max(a, cut) - cut, b - cut) for a, b in self.spans if b > cut))


def render(template: Callable[[Chat], str], prompt: Chat) -> Rendered:
    """Render `prompt` with contents swapped for marks, then put the contents back and note where they are."""
    rendered = template([{**message, "content": _MARK.format(i)} for i, message in enumerate(prompt)])
    text, spans, at = "", [], 0
    for i, message in enumerate(prompt):
        mark = rendered.find(_MARK.format(i), at)
        if mark < 0:
            continue  # a template may leave a message out
        text += rendered[at:mark]
        spans.append((len(text), len(text) + len(message["content"])))
        text += message["content"]
        at = mark + len(_MARK.format(i))
    return Rendered(text + rendered[at:], tuple(spans))


def tokenize_rendered(tokenize: Callable[..., list[int]], rendered: Rendered, add_bos: bool) -> list[int]:
    """Tokens of a rendered prompt: template text with control tokens parsed, contents as plain text.

    `tokenize` is llama_cpp.Llama.tokenize. Cuts fall where the template meets a content (after a
    header's newline, before a control token), where the tokenizer's pre-split cuts anyway.
    """
    ids: list[int] = []
    at = 0
    for start, end in (*rendered.spans, (len(rendered.text), len(rendered.text))):
        for piece, special in ((rendered.text[at:start], True), (rendered.text[start:end], False)):
            if piece:
                ids += tokenize(piece.encode("utf-8"), add_bos=add_bos and not ids, special=special)
        at = end
    if not ids and add_bos:
        ids = tokenize(b"", add_bos=True, special=True)
    return ids


# llama.cpp logs one ERROR line per LoRA tensor that cannot sit in the repacked CPU buffer (168 for the
# shipped adapter) and then uses plain CPU memory, which works. Those lines are dropped; every other line
# goes to llama-cpp-python's own handler (which prints errors only, with verbose=False).
_HARMLESS = b"cannot use buft"
_log_filter = None  # the ctypes callback, kept alive here: llama.cpp holds only a raw pointer to it


def _drop_harmless_llama_logs(llama_cpp) -> None:
    global _log_filter
    if _log_filter is not None:
        return
    import ctypes

    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def log_filter(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if _HARMLESS not in text:
            _logger.llama_log_callback(level, text, user_data)

    _log_filter = log_filter
    llama_cpp.llama_log_set(_log_filter, ctypes.c_void_p(0))


class LlamaCppBackend:
    """One GGUF model in llama.cpp, loaded once and shared by every caller in the process."""

    token_counter = "llamacpp"  # the GGUF's own tokenizer and chat template
    trained_template: str | None = None  # a trained generator's meta-prompt (metaprompts.for_backend)

    def __init__(
        self,
        path: Path,
        model_id: str,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        lora: Path | None = None,
    ):
        try:
            import llama_cpp
        except ImportError:
            raise BackendError("llama-cpp-python is not installed (pip install -e . builds it)") from None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelFileError(
                    f"{path}: not a GGUF file (bad magic bytes); the file is corrupt or another format"
                )
        threads = n_threads or len(os.sched_getaffinity(0))
        settings = {"n_threads": threads, "n_threads_batch": threads, "verbose": False}
        if lora is not None:  # a LoRA adapter GGUF (promptmii export), applied at run time
            settings["lora_path"] = str(lora)
            _drop_harmless_llama_logs(llama_cpp)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx or 0,  # 0 = the model's trained context, capped below
                **settings,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(
                f"{path}: llama.cpp cannot load this GGUF ({e}); the file is corrupt or unsupported"
            ) from None
        if self._llm.n_ctx() > MAX_CONTEXT and not n_ctx:
            del self._llm
            self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=MAX_CONTEXT, **settings)
        self._llama_cpp = llama_cpp
        # Free the model before interpreter teardown; Llama.__del__ at exit finds its C bindings gone.
        atexit.register(self._llm.close)
        self.model_id = model_id
        self.context_length = self._llm.n_ctx()
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelFileError(f"{path}: the GGUF has no chat template; promptmii needs an instruct model")
        token_text = self._llm._model.token_get_text
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=token_text(self._llm.token_eos()), bos_token=token_text(self._llm.token_bos())
        )
        self._add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self._prefix: tuple[str, list[int]] = ("", [])  # rendered text of the last shared prefix, its tokens
        self._grammars: dict[tuple[str, ...], object] = {}

    @classmethod
    def from_spec(cls, target: str) -> LlamaCppBackend:
        """`target` is a bundled model name, a path to a .gguf file, or an exported training run."""
        if target in models.shipped_adapters():
            return cls.from_training_run(models.shipped_adapter(target))
        path = Path(target).expanduser()
        if models.is_training_run(path):
            return cls.from_training_run(path)
        if target.endswith(".gguf") or os.sep in target:
            if path.is_dir():
                raise ModelFileError(f"{path}: a directory, but not a training run (no {models.RUN_CONFIG})")
            if not path.is_file():
                what = "model file" if target.endswith(".gguf") else "model file or training run (`promptmii train`)"
                raise ModelFileError(f"{path}: no such {what}")
            return cls(path, f"{path.name}@{models.file_sha256(path)[:12]}")
        model = models.lookup(target)
        return cls(models.ensure_bundled(target), f"{model.name}-q4_k_m@{model.sha256[:12]}")

    @classmethod
    def from_training_run(cls, run: Path) -> LlamaCppBackend:
        """A trained generator on llama.cpp: the policy's bundled GGUF plus the adapter `promptmii export` wrote."""
        adapter = run / models.EXPORTED_ADAPTER
        if not adapter.is_file():
            raise ModelFileError(f"{run}: no {models.EXPORTED_ADAPTER}; run `promptmii export {run}` first")
        policy = models.run_policy(run)
        if Path(policy).expanduser().is_dir():
            raise ModelFileError(
                f"{run}: the policy {policy} is a transformers directory; llama.cpp needs its GGUF (use hf:{run})"
            )
        backend = cls(models.ensure_bundled(policy), models.adapter_model_id(run), lora=adapter)
        backend.trained_template = models.run_template(run)
        return backend

    # ------------------------------------------------------------ the Backend protocol

    def generate(self, prompts: list[Chat], params: GenParams) -> list[Generation]:
        """Run prompts one after another in the given order, so consecutive prompts share the KV prefix."""
        rendered = [self._render(prompt) for prompt in prompts]
        self._remember_prefix(rendered)
        grammar = self._grammar(params.choices) if params.choices else None
        return [self._generate_one(r, params, grammar) for r in rendered]

    def label_logprobs(self, prompt: Chat, labels: list[str]) -> dict[str, float]:
        """Sum of the log-probabilities of each label's tokens as the start of the reply.

        The prompt is evaluated once (the KV cache keeps it); each label's tokens then go through in
        one batch that returns the logits after every position, so scoring k labels costs about one
        prompt plus k short batches (banking77's 77 labels of up to 12 tokens: ~1 s on the 0.5B).
        """
        base = self._tokens(self._render(prompt))
        first = _log_softmax(self._next_token_logits(base))
        scores = {}
        for label in labels:
            ids = self._llm.tokenize(label.encode("utf-8"), add_bos=False, special=False)
            total = float(first[ids[0]])
            if len(ids) > 1:
                self._llm.n_tokens = len(base)  # drop the previous label from the KV cache
                following = self._logits_after_each(ids[:-1])
                total += sum(float(_log_softmax(row)[token]) for row, token in zip(following, ids[1:], strict=True))
            scores[label] = total
        self._llm.n_tokens = len(base)
        return scores

    def count_tokens(self, prompt: Chat) -> int:
        return len(self._tokens(self._render(prompt)))

    # ------------------------------------------------------------ internals

    def _render(self, prompt: Chat) -> Rendered:
        return render(lambda messages: self._formatter(messages=messages).prompt, prompt)

    def _tokenize(self, rendered: Rendered, add_bos: bool) -> list[int]:
        return tokenize_rendered(self._llm.tokenize, rendered, add_bos)

    def _tokens(self, rendered: Rendered) -> list[int]:
        """Tokens of a rendered prompt; the remembered shared prefix is not tokenized again."""
        prefix_text, prefix_ids = self._prefix
        if prefix_text and rendered.text.startswith(prefix_text):
            return prefix_ids + self._tokenize(rendered.tail(len(prefix_text)), add_bos=False)
        return self._tokenize(rendered, add_bos=self._add_bos)

    def _remember_prefix(self, rendered: list[Rendered]) -> None:
        """Tokenize the text a batch's prompts share once, cut where tokenization cannot cross.

        BPE pre-tokenizers (Qwen, Llama 3) never join a newline to a following non-space character, so
        cutting there splits no token; we still check it on the first prompt before trusting the cut.
        """
        if len(rendered) < 2 or rendered[0].text.startswith(self._prefix[0] or "\0"):
            return
        shared = os.path.commonprefix([r.text for r in rendered])  # noqa: RUF071 (character-wise is what we want)
        cut = _cut_after_newline(shared)
        if cut < MIN_SHARED_PREFIX_CHARS:
            return
        first = rendered[0]
        ids = self._tokenize(first.head(cut), add_bos=self._add_bos)
        if ids + self._tokenize(first.tail(cut), add_bos=False) == self._tokenize(first, add_bos=self._add_bos):
            self._prefix = (shared[:cut], ids)

    def _grammar(self, choices: tuple[str, ...]) -> object:
        if choices not in self._grammars:
            self._grammars[choices] = self._llama_cpp.LlamaGrammar.from_string(choice_grammar(choices), verbose=False)
        return self._grammars[choices]

    def _generate_one(self, rendered: Rendered, params: GenParams, grammar: object = None) -> Generation:
        start = time.perf_counter()
        try:
            tokens = self._tokens(rendered)
            if len(tokens) + params.max_tokens > self.context_length:
                raise ValueError(
                    f"prompt of {len(tokens)} tokens + {params.max_tokens} to generate exceeds the context of {self.context_length}"
                )
            out = self._llm.create_completion(
                prompt=tokens,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0 if params.temperature > 0 else 40,  # 0 = no top-k cut when sampling
                min_p=0.0,
                repeat_penalty=1.0,
                seed=params.seed,
                stop=list(params.stop) or None,
                grammar=grammar,
            )
        except (ValueError, RuntimeError) as e:
            return Generation(
                "", len(tokens) if "tokens" in locals() else 0, 0, time.perf_counter() - start, error=str(e)
            )
        usage = out["usage"]
        return Generation(
            out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"], time.perf_counter() - start
        )

    def _next_token_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits after `tokens`, re-evaluating only the part that differs from what is in the KV cache."""
        llm = self._llm
        common = 0
        for cached, new in zip(llm.input_ids[: llm.n_tokens], tokens, strict=False):
            if cached != new:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # evaluate at least one token so the logits are fresh
        llm.n_tokens = common
        llm.eval(tokens[common:])
        pointer = self._llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()

    def _logits_after_each(self, tokens: list[int]) -> list[np.ndarray]:
        """Evaluate `tokens` after the KV cache's first n_tokens in one batch; the logits after each token.

        Llama.eval keeps only the last position's logits unless the whole model runs with logits_all
        (costly for every other call), so this one batch asks for all of its positions itself.
        """
        llm = self._llm
        n_past = llm.n_tokens
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[n_past : n_past + len(tokens)] = tokens
        llm.n_tokens = n_past + len(tokens)
        vocab = llm.n_vocab()
        return [
            np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i), shape=(vocab,)).copy()
            for i in range(len(tokens))
        ]


def _cut_after_newline(text: str) -> int:
    """The last position that follows a newline and precedes a non-space character, or 0."""
    i = text.rfind("\n")
    while i >= 0:
        if i + 1 < len(text) and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    return 0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x.astype(np.float64) - float(x.max())
    return shifted - float(np.log(np.exp(shifted).sum()))
