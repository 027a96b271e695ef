"""`promptmii export runs/NAME`: the trained LoRA adapter as a GGUF that llama.cpp applies at run time.

Why an adapter and not a merged, re-quantized model: GRPO's small updates vanish under Q4/Q8
re-quantization (they are smaller than a quantization step and round away), while llama.cpp adds an F32 adapter to the bundled Q4_K_M weights
exactly. The file is what llama.cpp's own convert_lora_to_gguf.py writes: general.type "adapter",
the base model's architecture, adapter.type "lora", adapter.lora.alpha (F32), and for every adapted
matrix two tensors `blk.{i}.{name}.weight.lora_a` (r x in) and `.lora_b` (out x r).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from promptmii import models
from promptmii.errors import ModelFileError, PromptMIIError

# transformers module names (Qwen2/Llama family) -> llama.cpp tensor names
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LORA_KEY = re.compile(r"layers\.(\d+)\.(self_attn\.\w+_proj|mlp\.\w+_proj)\.lora_([AB])\.weight$")


def gguf_tensor_name(peft_key: str) -> str:
    """`base_model.model.model.layers.3.mlp.up_proj.lora_A.weight` -> `blk.3.ffn_up.weight.lora_a`."""
    match = LORA_KEY.search(peft_key)
    if not match or match.group(2) not in GGUF_NAMES:
        raise PromptMIIError(f"cannot export adapter tensor {peft_key}: no llama.cpp name for it")
    layer, module, side = match.groups()
    return f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{side.lower()}"


def export_adapter(run: Path, out: Path | None = None) -> Path:
    """Write run/adapter.gguf (or `out`) from run/adapter/; returns the path."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir = run / models.ADAPTER_DIR
    config_path = adapter_dir / "adapter_config.json"
    if not models.is_training_run(run):
        raise PromptMIIError(f"{run}: not a promptmii training run (no {models.RUN_CONFIG})")
    if not config_path.is_file():
        raise ModelFileError(f"{run}: no trained adapter ({models.ADAPTER_DIR}/ is written when training ends)")
    policy = models.run_policy(run)
    if Path(policy).expanduser().is_dir():
        raise PromptMIIError(f"{run}: the policy is a transformers directory; export needs a bundled GGUF base")
    base_gguf = models.ensure_bundled(policy)
    adapter = json.loads(config_path.read_text(encoding="utf-8"))
    rank = adapter["r"]
    # llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank): write the alpha that gives the same
    alpha = adapter["lora_alpha"] * (math.sqrt(rank) if adapter.get("use_rslora") else 1.0)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))

    architecture = gguf.GGUFReader(str(base_gguf)).fields["general.architecture"]
    arch = bytes(architecture.parts[architecture.data[0]]).decode()
    out = out or run / models.EXPORTED_ADAPTER
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for key in sorted(tensors):
        writer.add_tensor(gguf_tensor_name(key), tensors[key].astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out
