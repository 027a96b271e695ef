"""PromptMIIClassifier: the method as a scikit-learn style text classifier (fit = one generator call).

`fit(X, y)` draws n labelled rows (seeded) and asks the generator for an instruction, once; `predict`
labels texts with the follower behind that instruction, `predict_proba` ranks the labels by their
log-probabilities (softmax over the label set), `score` is macro-F1 with INVALID counted wrong. The
fitted state is an instruction.json, so `save`/`load` and `from_instruction` share one file with
`promptmii induce` and `promptmii classify`.

Models are given as backend specs (strings), not objects, so scikit-learn's `clone` copies an
unfitted estimator without copying a model. scikit-learn is optional: with it installed the class
is a real `BaseEstimator`/`ClassifierMixin` (tags, repr, Pipeline, cross_val_score); without it the
same get_params/set_params/fit/predict/score still work.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from promptmii import metaprompts, prompts
from promptmii.backends import Backend
from promptmii.check import check_against_naive
from promptmii.classify import DEFAULT_CHUNK, Labeller, check_follower, load_follower
from promptmii.data import Example, clashing_labels
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.evaluate import DECODING
from promptmii.experiment import DEFAULT_BACKEND, DEFAULT_GENERATOR
from promptmii.induce import InduceConfig, induce
from promptmii.instruction_file import InstructionFile, load_instruction_file
from promptmii.metrics import macro_f1
from promptmii.parse import INVALID
from promptmii.results import promptmii_version

try:  # scikit-learn is optional: a dev dependency, not a runtime one
    from sklearn.base import BaseEstimator, ClassifierMixin

    _BASES: tuple[type, ...] = (ClassifierMixin, BaseEstimator)
except ImportError:
    _BASES = ()

log = logging.getLogger(__name__)

# The generator `promptmii induce` runs: the shipped trained one, else the untrained bundled model.
DEFAULT_FIT_GENERATOR = DEFAULT_GENERATOR or DEFAULT_BACKEND

PARAMS = ("generator", "follower", "n", "template", "seed", "decoding", "max_instruction_tokens", "cache", "check")


class PromptMIIClassifier(*_BASES):  # type: ignore[misc]
    """Induce an instruction from n labelled texts in one generator call, then classify with the follower.

    >>> clf = PromptMIIClassifier(n=20).fit(texts, labels)          # doctest: +SKIP
    >>> clf.predict(["My parcel never arrived"]); clf.save("runs/tickets")   # doctest: +SKIP
    """

    def __init__(
        self,
        generator: str = DEFAULT_FIT_GENERATOR,
        follower: str = DEFAULT_BACKEND,
        n: int = 20,
        template: str | None = None,
        seed: int = 0,
        decoding: str = "generate",
        max_instruction_tokens: int = 1024,
        cache: bool = True,
        check: bool = False,
    ):
        # scikit-learn's rule: store the parameters as given, check them in fit.
        self.generator = generator
        self.follower = follower
        self.n = n
        self.template = template
        self.seed = seed
        self.decoding = decoding
        self.max_instruction_tokens = max_instruction_tokens
        self.cache = cache
        self.check = check  # keep the instruction only if it beats Naive on the n rows (promptmii.check)

    # ------------------------------------------------------------ scikit-learn's parameter protocol

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params: Any) -> PromptMIIClassifier:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise PromptMIIError(
                f"PromptMIIClassifier has no parameter {unknown[0]}; parameters are: {', '.join(PARAMS)}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------ fit / predict

    def fit(self, X: Iterable[Any], y: Iterable[Any]) -> PromptMIIClassifier:  # noqa: N803 (scikit-learn's name)
        """One generator call on a seeded sample of n rows of (X, y); the instruction is the whole model."""
        self._check_params()
        texts, values = _texts(X), list(np.asarray(y, dtype=object).ravel())
        if len(texts) != len(values):
            raise DataError(f"fit: {len(texts)} texts but {len(values)} labels")
        classes = _unique(values)
        labels = tuple(str(v).strip() for v in classes)
        if len(labels) < 2:
            raise DataError(f"fit: only {len(labels)} distinct label(s) in y; a classifier needs at least two")
        if len(set(labels)) != len(labels) or clashing_labels(labels):
            raise DataError(f"fit: labels {list(labels)} differ only in type, case or spaces; the follower cannot tell")
        rows = random.Random(f"{self.seed}/fit").sample(range(len(texts)), min(self.n, len(texts)))
        shots = [Example(texts[i], str(values[i]).strip()) for i in rows]
        config = InduceConfig(template=self.template, max_tokens=self.max_instruction_tokens, seed=self.seed)
        generator = self._backend(self.generator)
        made = induce(shots, labels, generator, config)
        if made.error or not made.text:
            raise BackendError(f"fit: the generator call failed ({made.error or 'it wrote an empty instruction'})")
        instruction, self.check_ = made.text, None
        if self.check:
            outcome = check_against_naive(
                made.text, shots, labels, self._backend(self.follower), decoding=self.decoding
            )
            if outcome.error:
                raise BackendError(f"fit: {outcome.error}")
            instruction = outcome.prefix
            self.check_ = outcome.as_record()
        typed = not all(isinstance(v, str) for v in classes)
        self._set_fitted(
            InstructionFile(
                instruction=instruction,
                labels=labels,
                format_constraint=prompts.format_constraint(labels),
                follower=self.follower,
                generator=self.generator,
                template=made.template,  # the name induce resolved (template=None: the tuned one for this generator)
                n=len(shots),
                seed=self.seed,
                decoding=self.decoding,
                generator_model_id=generator.model_id,
                label_values=tuple(_plain(v) for v in classes) if typed else None,
                check=self.check_,
                promptmii_version=promptmii_version(),
            )
        )
        return self

    def predict(self, X: Iterable[Any]) -> np.ndarray:  # noqa: N803 (scikit-learn's name)
        """The label of each text; "<INVALID>" where the reply named no label or the call failed (logged)."""
        predictions = self._label(_texts(X), self.decoding)
        failed = [p.error for p in predictions if p.error]
        if failed:
            log.warning(
                "%d of %d follower calls failed and are predicted %s (first: %s)",
                len(failed),
                len(predictions),
                INVALID,
                failed[0],
            )
        out = [self._value[p.label] if p.label is not None else INVALID for p in predictions]
        return np.asarray(out, dtype=object if INVALID in out else self.classes_.dtype)

    def predict_proba(self, X: Iterable[Any]) -> np.ndarray:  # noqa: N803 (scikit-learn's name)
        """Label scoring (the backend's label_logprobs), softmax over the labels, columns in `classes_` order.

        Calibrated (content-free input subtracted) when the decoding is score-calibrated. A row whose
        scoring failed is NaN.
        """
        decoding = "score-calibrated" if self.decoding == "score-calibrated" else "score"
        predictions = self._label(_texts(X), decoding)
        rows = []
        for p in predictions:
            probabilities = p.probabilities or {}
            rows.append([probabilities.get(label, float("nan")) for label in self.instruction_.labels])
        return np.asarray(rows, dtype=float).reshape(len(predictions), len(self.instruction_.labels))

    def score(self, X: Iterable[Any], y: Iterable[Any], sample_weight: Any = None) -> float:  # noqa: N803 (scikit-learn's name)
        """Macro-F1 over the gold classes present (INVALID is always wrong), the paper's metric."""
        if sample_weight is not None:
            raise PromptMIIError("score: sample_weight is not supported (macro-F1 is unweighted)")
        gold = [str(v).strip() for v in np.asarray(y, dtype=object).ravel()]
        return macro_f1(gold, [str(p).strip() if p != INVALID else INVALID for p in self.predict(X)])

    # ------------------------------------------------------------ the instruction file

    def save(self, path: str | Path) -> Path:
        """Write the fitted instruction as instruction.json (a path without .json is a folder)."""
        return self._fitted().save(path)

    @classmethod
    def load(cls, path: str | Path, **params: Any) -> PromptMIIClassifier:
        """A classifier fitted from an instruction.json (`save`'s or `promptmii induce`'s)."""
        return cls.from_instruction(path, **params)

    @classmethod
    def from_instruction(cls, path: str | Path, **params: Any) -> PromptMIIClassifier:
        """A fitted classifier from someone's instruction.json; `params` override its settings (e.g. follower)."""
        file = load_instruction_file(path)
        settings = {
            "generator": file.generator,
            "follower": file.follower,
            "n": file.n,
            "template": file.template,
            "seed": file.seed,
            "decoding": file.decoding,
        }
        classifier = cls(**(settings | params))
        classifier._set_fitted(file)
        return classifier

    # ------------------------------------------------------------ internals

    def _set_fitted(self, file: InstructionFile) -> None:
        self.instruction_ = file
        values = file.label_values if file.label_values is not None else file.labels
        self.classes_ = np.asarray(values)
        self._value = dict(zip(file.labels, values, strict=True))

    def _fitted(self) -> InstructionFile:
        if not hasattr(self, "instruction_"):
            raise PromptMIIError(
                "this PromptMIIClassifier is not fitted yet; call fit(X, y) or load an instruction.json"
            )
        return self.instruction_

    def _label(self, texts: list[str], decoding: str) -> list[Any]:
        file = self._fitted()
        self._check_params()
        follower = self._backend(self.follower)
        if not getattr(self, "_follower_checked", False):
            check_follower(file, self.follower, follower)
            self._follower_checked = True
        labeller = Labeller(file, follower, decoding)
        chunk = max(DEFAULT_CHUNK, 4 * labeller.concurrency)
        return [p for start in range(0, len(texts), chunk) for p in labeller.label(texts[start : start + chunk])]

    def _backend(self, spec: str) -> Backend:
        loaded = self.__dict__.setdefault("_backends", {})
        key = (spec, bool(self.cache))
        if key not in loaded:
            loaded[key] = load_follower(spec, cache=bool(self.cache))
        return loaded[key]

    def _check_params(self) -> None:
        if self.decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{self.decoding}'; choose one of: {', '.join(DECODING)}")
        if not isinstance(self.n, int) or self.n < 1:
            raise PromptMIIError(f"n must be a positive integer, got {self.n!r}")
        if self.template is not None:
            metaprompts.named(self.template)  # raises on an unknown template, with "did you mean"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the loaded models (joblib workers load their own)."""
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_backends", "_follower_checked")}


def _texts(x: Iterable[Any]) -> list[str]:
    """X as a list of texts: a list, array or Series of strings, or a one-column 2-D array/DataFrame."""
    array = np.asarray(x, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"X must be a 1-D list of texts, got an array of shape {array.shape}")
    return ["" if x is None else str(x) for x in array]


def _unique(values: list[Any]) -> list[Any]:
    """Sorted distinct labels (numbers numerically, strings alphabetically), as np.unique would."""
    try:
        return sorted(set(values))
    except TypeError:  # mixed types: sort by their text
        return sorted(set(values), key=str)


def _plain(value: Any) -> Any:
    """A numpy scalar as a plain Python value, so label_values can go into JSON."""
    return value.item() if isinstance(value, np.generic) else value
