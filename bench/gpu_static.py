"""bench/gpu.py's static-cache decoding rows: the compiled static KV cache, its --static-variants (other attention,
autocast, the LoRA merged) and its --profile."""

from __future__ import annotations

from contextlib import contextmanager

from gpu_common import BenchState, error_record, log, path_row


def merged_layers(v2t) -> int:
    """How many of the model's LoRA layers hold a merged adapter (peft's ``LoraLayer.merged``)."""
    from peft.tuners.lora import LoraLayer

    return sum(m.merged for m in v2t.model.modules() if isinstance(m, LoraLayer))


@contextmanager
def attention(v2t, implementation: str):
    """The base model computes attention with transformers' ``implementation`` inside the block."""
    base = v2t.base_model
    before = base.config._attn_implementation  # transformers has no public getter (its own code reads this)
    base.set_attn_implementation(implementation)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


@contextmanager
def sdpa_without_cudnn(v2t):
    """SDPA attention, choosing among its flash, memory-efficient and math backends only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with (
        attention(v2t, "sdpa"),
        sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),
    ):
        yield


@contextmanager
def autocast_in_base_dtype(v2t):
    """Everything the call computes under torch.autocast in the base's dtype (projector and LoRA included)."""
    import torch

    with torch.autocast(v2t.device.type, dtype=v2t.base_model.v2t_dtype):
        yield


@contextmanager
def lora_merged(v2t):
    """The active LoRA update merged into the base weights inside the block (peft ``merge_adapter``), unmerged
    after it."""
    v2t.model.merge_adapter()
    try:
        if merged_layers(v2t) == 0:
            raise RuntimeError("merge_adapter merged no LoRA layer")
        yield
    finally:
        v2t.model.unmerge_adapter()


# --static-variants: a variant joins these features with "+" (e.g. eager+autocast); name: (context, help)
STATIC_FEATURES = {
    "eager": (lambda v2t: attention(v2t, "eager"), "transformers' eager attention (compiled by inductor), not SDPA"),
    "sdpa-no-cudnn": (sdpa_without_cudnn, "SDPA without its cuDNN backend"),
    "autocast": (
        autocast_in_base_dtype,
        "the call under torch.autocast in the base's dtype: the fp32 projector and LoRA matrices multiply in bf16",
    ),
    "merged": (
        lora_merged,
        "the LoRA update merged into the base weights for the row (peft merge_adapter / "
        "unmerge_adapter; the bench's untrained adapter has LoRA B = 0, so this times the "
        "merged layers' speed and its text check cannot tell)",
    ),
}


class StaticPaths(BenchState):
    """The static-cache rows of section (c): the plain one, each --static-variants one, and the profile."""

    def static_row(
        self, v2t, vec, ours: dict, tokens: int, plain_s: float, plain_texts: list[str], path: str = "v2t_static"
    ) -> dict:
        """The static KV cache: the first call at a shape compiles the decoding step (CUDA), the second is timed."""
        static = ours | {"cache": "static"}
        try:
            _, first_s = self.timed(v2t.generate, vec, **static)
            texts, seconds = self.timed(v2t.generate, vec, **static)
        except Exception as exc:  # noqa: BLE001 - a compile failure is a result; the other paths still count
            log(f"[decoding]   {path}: {error_record(exc)}")
            return {f"{path}_error": error_record(exc)}
        return path_row(path, seconds, tokens, plain_s, texts, plain_texts) | {
            f"{path}_first_call_s": round(first_s, 2)
        }

    def static_variant_row(
        self, variant: str, v2t, vec, ours: dict, tokens: int, plain_s: float, plain_texts: list[str]
    ) -> dict:
        """:meth:`static_row` with the features of ``variant`` (``STATIC_FEATURES`` joined by ``+``) on for this row
        only. The attention features answer the profile's finding that cuDNN's SDPA kernel took half of the compiled
        step's device time at batch 1024 on an H100 (GPT-2 has no ``flex_attention``); ``autocast`` and ``merged``
        answer its fp32 FFMA GEMMs of the LoRA matrices. A feature that cannot be switched on is this row's error."""
        from contextlib import ExitStack

        import torch

        path = "v2t_static_" + variant.replace("+", "_").replace("-", "_")
        torch.compiler.reset()  # trace again: attention, backend and autocast are fixed when the step is compiled
        try:
            with ExitStack() as stack:
                for feature in variant.split("+"):
                    stack.enter_context(STATIC_FEATURES[feature][0](v2t))
                row = self.static_row(v2t, vec, ours, tokens, plain_s, plain_texts, path=path)
        except Exception as exc:  # noqa: BLE001 - e.g. a merge an 8-bit base refuses: the other rows still count
            log(f"[decoding]   {path}: {error_record(exc)}")
            return {f"{path}_error": error_record(exc)}
        finally:
            torch.compiler.reset()
        if f"{path}_s" in row:
            log(
                f"[decoding]   static, {variant}: {row[path + '_tokens_per_s']:.0f} tok/s "
                f"({row[path + '_vs_plain']:.2f}x plain, first call {row[path + '_first_call_s']:.1f} s), "
                f"same text {row[path + '_same_text']}"
            )
        return row

    def profile_static(self, v2t, vec, ours: dict) -> dict:
        """One warm static-cache call under torch.profiler: where its wall time goes, device and host."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            with profile(activities=activities) as prof:
                _, seconds = self.timed(v2t.generate, vec, **ours, cache="static")
        except Exception as exc:  # noqa: BLE001 - a profiler failure is a result
            return {"error": error_record(exc)}
        events = prof.key_averages()

        def top(rows, attr: str) -> list[str]:
            ranked = sorted(rows, key=lambda e: getattr(e, attr), reverse=True)[:12]
            return [f"{getattr(e, attr) / 1000:.1f} ms {e.count}x {e.key[:90]}" for e in ranked]

        # kernels only: the operators' rows repeat them, and so do annotations such as "## Call CompiledFxGraph ##"
        kernels = [
            e
            for e in events
            if e.device_type == DeviceType.CUDA
            and not e.key.startswith("##")
            and not getattr(e, "is_user_annotation", False)
        ]
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1000
        result = {
            "wall_s_profiled": round(seconds, 4),
            "device_busy_ms": round(busy_ms, 1),
            "device_busy_share": round(busy_ms / 1000 / seconds, 3),
            "top_device": top(kernels, "self_device_time_total"),
            "top_host": top(events, "self_cpu_time_total"),
        }
        log(f"[decoding]   profile of one static call: {seconds:.3f} s wall, device busy {busy_ms:.0f} ms")
        for line in result["top_device"][:6] + result["top_host"][:6]:
            log(f"[decoding]     {line}")
        return result
