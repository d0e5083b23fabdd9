"""bench/gpu.py's section (b): one optimizer step of each training mode on the same batch; s/step and peak memory
as ratios against full fine-tuning in fp32."""

from __future__ import annotations

import dataclasses
import math
import time

from gpu_common import REFERENCE_H200, BenchState, error_record, free_memory, gib, log


@dataclasses.dataclass(frozen=True)
class Mode:
    """One training mode of section (b); ``create`` holds extra ``Vector2Text.create`` arguments. ``stock_gelu``
    puts back transformers' elementwise ``gelu_new``, which lora_v2t's loader fuses (the original experiment's
    model, and this code's before the fusion)."""

    key: str
    label: str
    trainable: str
    quantization: str
    autocast: bool
    checkpointing: bool
    create: dict = dataclasses.field(default_factory=dict)
    stock_gelu: bool = False


# the first is the baseline
MODES = [
    Mode("full_fp32", "full fine-tuning, fp32 (baseline)", "full", "none", False, False, stock_gelu=True),
    Mode("full_bf16", "full fine-tuning, bf16 autocast", "full", "none", True, False, stock_gelu=True),
    Mode("lora_8bit_ckpt", "LoRA + projector, 8-bit, checkpointing", "lora", "8bit", True, True),
    Mode(
        "lora_8bit_stock",
        "LoRA + projector, 8-bit, stock gelu_new (before)",
        "lora",
        "8bit",
        True,
        False,
        stock_gelu=True,
    ),
    Mode("lora_8bit", "LoRA + projector, 8-bit", "lora", "8bit", True, False),
    Mode("lora_8bit_d0", "LoRA + projector, 8-bit, LoRA dropout 0", "lora", "8bit", True, False, {"lora_dropout": 0.0}),
    Mode(
        "lora_8bit_d0_t0",
        "LoRA + projector, 8-bit, dropout 0, int8 threshold 0",
        "lora",
        "8bit",
        True,
        False,
        {"lora_dropout": 0.0, "int8_threshold": 0.0},
    ),
    Mode("lora_4bit_ckpt", "LoRA + projector, 4-bit nf4, checkpointing", "lora", "4bit", True, True),
    Mode("lora_bf16", "LoRA + projector, bf16", "lora", "none", True, False),
]


def stock_gelu(model) -> int:
    """Put transformers' elementwise ``gelu_new`` back where lora_v2t's loader fused it (every fused tanh-GELU: meant
    for the GPT-2 shapes here, it would also turn Gemma's own into ``gelu_new``); returns how many."""
    from transformers.activations import get_activation

    from lora_v2t.model.backbone import replace_activations

    return replace_activations(model, (type(get_activation("gelu_pytorch_tanh")),), "gelu_new")


class Training(BenchState):
    """Section (b): ``section_training`` measures each of ``MODES``, ``table_training`` reports them."""

    def measure_mode(self, mode: Mode) -> dict:
        import torch

        from lora_v2t import Vector2Text

        s = self.shapes
        record = {
            "mode": mode.key,
            "label": mode.label,
            "trainable": mode.trainable,
            "quantization": mode.quantization,
            "bf16_autocast": mode.autocast,
            "gradient_checkpointing": mode.checkpointing,
        } | mode.create
        free_memory()
        before = torch.cuda.memory_allocated() if self.cuda else 0
        start = time.perf_counter()
        v2t = Vector2Text.create(
            backbone=str(self.backbone),
            encoder=f"precomputed:{s['dim']}",
            projector="mlp",
            quantization=mode.quantization,
            trainable=mode.trainable,
            device=self.device,
            seed=0,
            **mode.create,
        )
        record["create_s"] = round(time.perf_counter() - start, 1)
        record["gelu"] = f"stock ({stock_gelu(v2t.base_model)} put back)" if mode.stock_gelu else "fused"
        if mode.checkpointing:
            v2t.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        params = v2t.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        record["trainable_params"] = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        generator = torch.Generator().manual_seed(0)
        vectors = torch.nn.functional.normalize(torch.randn(s["batch"], s["dim"], generator=generator), dim=1)
        input_ids = torch.randint(0, s["vocab"], (s["batch"], s["tokens"]), generator=generator).to(self.device)
        attention_mask = torch.ones_like(input_ids)
        if self.cuda:
            record["weights_gib"] = gib(torch.cuda.memory_allocated() - before)
            torch.cuda.reset_peak_memory_stats()
        v2t.train()
        times, losses = [], []
        warmup = self.args.warmup
        for step in range(warmup + self.args.steps):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=mode.autocast):
                loss = v2t.forward(vectors, input_ids, attention_mask).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - t0)
                losses.append(loss.detach().item())
        times.sort()
        record |= {
            "s_per_step": round(sum(times) / len(times), 4),
            "s_per_step_median": round(times[len(times) // 2], 4),
            "loss_last": round(losses[-1], 4),
            "loss_finite": all(math.isfinite(x) for x in losses),
        }
        if self.cuda:
            record["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated() - before)
            record["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
            record["allocated_before_gib"] = gib(before)
        del v2t, optimizer, loss, params
        return record

    def section_training(self) -> dict:
        s = self.shapes
        wanted = self.args.modes.split(",") if self.args.modes else [m.key for m in MODES]
        section = {
            "batch": s["batch"],
            "tokens": s["tokens"],
            "warmup_steps": self.args.warmup,
            "timed_steps": self.args.steps,
            "baseline": MODES[0].key,
            "optimizer": "torch.optim.AdamW",
            "peak_memory_method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats once the "
            "model is built, minus what was allocated before building it"
            if self.cuda
            else "none (CPU smoke run)",
            "modes": [],
        }
        self.results["training"] = section
        for mode in MODES:
            if mode.key not in wanted:
                continue
            log(f"[training] {mode.label} ...")
            try:
                record = self.measure_mode(mode)
            except Exception as exc:  # noqa: BLE001 - an OOM or a library failure is a result, not a crash
                bnb_on_cpu = self.smoke and mode.quantization in ("8bit", "4bit")
                record = {
                    "mode": mode.key,
                    "label": mode.label,
                    ("skipped" if bnb_on_cpu else "error"): error_record(exc),
                }
            free_memory()
            section["modes"].append(record)
            self.add_ratios(section)
            self.save()
            log(f"[training]   {self.format_mode(record)}")
        return section

    @staticmethod
    def add_ratios(section: dict) -> None:
        base = next((r for r in section["modes"] if r["mode"] == section["baseline"] and "s_per_step" in r), None)
        for r in section["modes"]:
            if base is None or "s_per_step" not in r:
                continue
            r["speed_vs_full_fp32"] = round(base["s_per_step"] / r["s_per_step"], 3)
            if base.get("peak_allocated_gib") and r.get("peak_allocated_gib") is not None:
                r["memory_vs_full_fp32"] = round(r["peak_allocated_gib"] / base["peak_allocated_gib"], 4)

    @staticmethod
    def format_mode(r: dict) -> str:
        if "s_per_step" not in r:
            return f"{r['label']}: {'skipped' if 'skipped' in r else 'ERROR'}: {r.get('skipped') or r.get('error')}"
        peak = r.get("peak_allocated_gib")
        text = (
            f"{r['s_per_step']:.3f} s/step, peak {'-' if peak is None else f'{peak:.2f} GiB'}, "
            f"{r['trainable_params']:,} trainable, loss {r['loss_last']}"
        )
        return text

    @staticmethod
    def table_training(section: dict) -> None:
        """Section (b)'s table for the report at the end."""
        log(
            f"\n(b) training modes, batch {section['batch']} x {section['tokens']} tokens "
            f"(ratios against full fine-tuning fp32, same run; H200 reference from the issue, not this script)"
        )
        log(f"  {'mode':<54}{'s/step':>8}{'peak GiB':>10}{'memory':>9}{'speed':>8}{'ref s':>8}{'ref GiB':>9}")
        for x in section.get("modes", []):
            ref = REFERENCE_H200.get(x["mode"], (None, None))
            if "s_per_step" not in x:
                log(
                    f"  {x['label']:<54}  {'skipped' if 'skipped' in x else 'ERROR'}: "
                    f"{x.get('skipped') or x.get('error')}"
                )
                continue
            mem = x.get("memory_vs_full_fp32")
            speed = x.get("speed_vs_full_fp32")
            log(
                f"  {x['label']:<54}{x['s_per_step']:>8.3f}{str(x.get('peak_allocated_gib', '-')):>10}"
                f"{'-' if mem is None else f'{mem:.0%}':>9}{'-' if speed is None else f'{speed:.2f}x':>8}"
                f"{'-' if ref[0] is None else ref[0]:>8}{'-' if ref[1] is None else ref[1]:>9}"
            )
