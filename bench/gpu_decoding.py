"""bench/gpu.py's section (c): greedy decoding tokens/s of transformers' generate, lora_v2t's v2t.generate (dynamic
and static cache) and, with --older, an older lora_v2t's, at each batch and backbone quantization."""

from __future__ import annotations

from pathlib import Path

from gpu_common import error_record, free_memory, gib, log, number, path_row
from gpu_static import StaticPaths
from older import run_in


def decode_vectors(n: int, dim: int):
    """``n`` random unit vectors (seeded)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)


# the older code's decoding, run by bench/older.py's run_in with that code importable
OLDER_DECODING = """
import time, torch
from lora_v2t import Vector2Text
v2t = Vector2Text.create(backbone=ARGS["backbone"], encoder=f"precomputed:{ARGS['dim']}", projector="mlp",
                         quantization=ARGS["quantization"], trainable="lora", device=ARGS["device"], seed=0)
import numpy
vectors = torch.from_numpy(numpy.load(ARGS["vectors"]))  # the parent's, so that every path decodes the same rows
out = {}
for batch in ARGS["batches"]:
    vec = vectors[:batch]
    opts = {"batch_size": batch, "repetition_penalty": 1.0}
    v2t.generate(vec, max_new_tokens=ARGS["new_tokens"], **opts)  # warm-up at the full length, as for the others
    if ARGS["device"] == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    texts = v2t.generate(vec, max_new_tokens=ARGS["new_tokens"], **opts)
    if ARGS["device"] == "cuda":
        torch.cuda.synchronize()
    out[batch] = {"s": time.perf_counter() - t0, "texts": texts}
json.dump(out, open(ARGS["result"], "w", encoding="utf-8"))
"""


class Decoding(StaticPaths):
    """Section (c): ``section_decoding`` measures each backbone quantization at each batch, ``table_decoding``
    reports them."""

    def measure_decoding(self, quantization: str, batches: list[int], new_tokens: int) -> list[dict]:
        import torch

        from lora_v2t import Vector2Text

        s = self.shapes
        v2t = Vector2Text.create(
            backbone=str(self.backbone),
            encoder=f"precomputed:{s['dim']}",
            projector="mlp",
            quantization=quantization,
            trainable="lora",
            device=self.device,
            seed=0,
        )
        tok = v2t.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        vectors = decode_vectors(max(batches), s["dim"])

        def plain(vec, max_new_tokens):
            with torch.no_grad():
                prefix = v2t.prefix(vec)  # (B, k, h): the same prefix v2t.generate builds
                mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
                return v2t.model.generate(
                    inputs_embeds=prefix,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )

        older = self.older_decoding(quantization, vectors, batches, new_tokens)
        rows = []
        for batch in batches:
            vec = vectors[:batch]
            ours = {"max_new_tokens": new_tokens, "batch_size": batch, "repetition_penalty": 1.0}
            # warm-ups at the full length: a shorter one leaves the growing KV cache's allocations to the timed call
            # (on an H100 that made the first full-length call of every path 2-5x slower)
            plain(vec, new_tokens)
            v2t.generate(vec, **ours)
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            ids, plain_s = self.timed(plain, vec, new_tokens)
            texts, ours_s = self.timed(v2t.generate, vec, **ours)
            ids = ids.cpu()
            is_eos = ids == eos
            lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.tensor(ids.shape[1]))
            tokens = int(lengths.sum())  # up to and including each row's first EOS; the padding after is not counted
            plain_texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
            row = {
                "quantization": quantization,
                "batch": batch,
                "max_new_tokens": new_tokens,
                "generated_tokens": tokens,
                "rows_ended_by_eos": int(is_eos.any(1).sum()),
                "decode_steps": int(ids.shape[1]),
            }
            row |= path_row("plain", plain_s, tokens, plain_s)
            row |= path_row("v2t", ours_s, tokens, plain_s, texts, plain_texts)
            if older.get(batch):
                row |= path_row("older", older[batch]["s"], tokens, plain_s, older[batch]["texts"], plain_texts)
            row |= self.static_row(v2t, vec, ours, tokens, plain_s, plain_texts)
            if self.args.profile and batch == max(batches):
                row["static_profile"] = self.profile_static(v2t, vec, ours)
            for variant in self.args.static_variants:  # after the profile: each compiles again
                row |= self.static_variant_row(variant, v2t, vec, ours, tokens, plain_s, plain_texts)
            if older.get(batch):
                for path in ["v2t"] + [
                    k.removesuffix("_tokens_per_s")
                    for k in row
                    if k.startswith("v2t_static") and k.endswith("_tokens_per_s")
                ]:
                    if f"{path}_s" in row:
                        row[f"{path}_vs_older"] = round(row["older_s"] / row[f"{path}_s"], 3)
            row["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated()) if self.cuda else None
            rows.append(row)
            self.log_decoding(row)
        return rows  # the model is freed with this frame

    def older_decoding(self, quantization: str, vectors, batches: list[int], new_tokens: int) -> dict:
        """``v2t.generate`` of the code in ``--older`` (today's path before issue 11) on ``vectors``, in a child
        process, warm at each batch like the paths here: {batch: {"s", "texts"}}; {} without --older or when it
        fails."""
        if not self.args.older:
            return {}
        import numpy as np

        np.save(self.work / "decode_vectors.npy", vectors.numpy())
        args = {
            "backbone": str(self.backbone),
            "dim": self.shapes["dim"],
            "quantization": quantization,
            "device": self.device,
            "batches": batches,
            "new_tokens": new_tokens,
            "vectors": str(self.work / "decode_vectors.npy"),
        }
        try:
            result = run_in(Path(self.args.older), OLDER_DECODING, args)
        except Exception as exc:  # noqa: BLE001
            log(f"[decoding]   older code: {error_record(exc)}")
            self.results.setdefault("decoding", {})[f"older_error_{quantization}"] = error_record(exc)
            return {}
        return {int(b): r for b, r in result.items()}

    @staticmethod
    def log_decoding(r: dict) -> None:
        def rate(path):
            return f"{r[path + '_tokens_per_s']:>9.1f} tok/s" if path + "_tokens_per_s" in r else "      - tok/s"

        log(
            f"[decoding]   {r['quantization']:>5} batch {r['batch']:>4}: plain {rate('plain')}, v2t.generate "
            f"{rate('v2t')} ({r['v2t_vs_plain']:.2f}x), static {rate('v2t_static')} "
            f"({number(r, 'v2t_static_vs_plain', 0, 2)}x, first call {number(r, 'v2t_static_first_call_s', 0, 1)} s), "
            f"older {rate('older')}; same text v2t {r['v2t_same_text']} static {r.get('v2t_static_same_text', '-')} "
            f"older {r.get('older_same_text', '-')}"
        )

    def section_decoding(self) -> dict:
        s = self.shapes
        batches = (
            [int(b) for b in self.args.decode_batches.split(",")] if self.args.decode_batches else s["decode_batches"]
        )
        new_tokens = self.args.new_tokens or s["new_tokens"]
        section = {
            "max_new_tokens": new_tokens,
            "batches": batches,
            "decoding": "greedy",
            "token_count": "generated tokens up to and including each row's first EOS (padding after EOS "
            "not counted), taken from the plain path's ids; v2t.generate returns text only, and gives the "
            "same greedy sequences (v2t_same_text, v2t_static_same_text, older_same_text)",
            "runs": [],
        }
        self.results["decoding"] = section
        for quantization in self.args.decode_quantization.split(","):
            log(f"[decoding] {quantization} backbone + LoRA, {new_tokens} new tokens ...")
            try:
                section["runs"] += self.measure_decoding(quantization, batches, new_tokens)
            except Exception as exc:  # noqa: BLE001
                bnb_on_cpu = self.smoke and quantization in ("8bit", "4bit")
                section["runs"].append(
                    {"quantization": quantization, ("skipped" if bnb_on_cpu else "error"): error_record(exc)}
                )
                log(f"[decoding]   {quantization}: {error_record(exc)}")
            free_memory()
            self.save()
        return section

    @staticmethod
    def table_decoding(section: dict) -> None:
        """Section (c)'s table for the report at the end."""
        log(
            f"\n(c) greedy decoding, {section['max_new_tokens']} new tokens, tokens/s (each path timed at "
            f"its second full-length call at that batch; older: --older's code)"
        )
        log(
            f"  {'backbone':<10}{'batch':>6}{'plain HF':>10}{'v2t':>10}{'ratio':>7}{'static':>10}{'ratio':>7}"
            f"{'older':>10}{'static/older':>13}  same text as plain (v2t / static / older)"
        )
        for x in section.get("runs", []):
            if "batch" not in x:
                log(f"  {x['quantization']:<10}  {x.get('skipped') or 'ERROR: ' + x.get('error', '')}")
                continue
            log(
                f"  {x['quantization']:<10}{x['batch']:>6}{x['plain_tokens_per_s']:>10.0f}"
                f"{x['v2t_tokens_per_s']:>10.0f}{x['v2t_vs_plain']:>7.2f}"
                f"{number(x, 'v2t_static_tokens_per_s', 10, 0)}"
                f"{number(x, 'v2t_static_vs_plain', 7, 2)}{number(x, 'older_tokens_per_s', 10, 0)}"
                f"{number(x, 'v2t_static_vs_older', 13, 2)}  {x['v2t_same_text']} / "
                f"{x.get('v2t_static_same_text', '-')} / {x.get('older_same_text', '-')}"
            )
            for key in [
                k
                for k in x
                if k.startswith("v2t_static_") and k.endswith("_tokens_per_s") and k != "v2t_static_tokens_per_s"
            ]:  # the --static-variants rows
                path = key.removesuffix("_tokens_per_s")
                log(
                    f"    {path.removeprefix('v2t_static_'):<24}{x[key]:>10.0f} tok/s, "
                    f"{number(x, path + '_vs_plain', 0, 2)}x plain, {number(x, path + '_vs_older', 0, 2)}x older, "
                    f"same text {x[path + '_same_text']}"
                )
