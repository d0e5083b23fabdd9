"""bench/gpu.py's section (a): the default recipe end to end through the CLI, each command a child process that
re-runs bench/gpu.py with --cli-child; exit status, wall time, torch's and nvidia-smi's peak memory."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpu_common import RECIPE, ROOT, BenchState, gib, log

SCRIPT = Path(__file__).resolve().with_name("gpu.py")  # the children run lora_v2t.cli.main through this script


class SmiPoller:
    """Peak ``memory.used`` (MiB) of the GPU, polled with nvidia-smi every 200 ms while a child runs."""

    def __init__(self):
        self.peak = self.start = None
        self._proc = None
        if not shutil.which("nvidia-smi"):
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        index = visible if visible.isdigit() else "0"
        self.start = self._query(index)
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", index, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @staticmethod
    def _query(index: str) -> int | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "-i", index, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return int(out.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                value = int(line.strip())
            except ValueError:
                continue
            self.peak = value if self.peak is None else max(self.peak, value)

    def stop(self) -> dict:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=5)
        return {"nvidia_smi_before_mib": self.start, "nvidia_smi_peak_mib": self.peak}


def cli_child(stats_file: str, argv: list[str]) -> int:
    """Run ``lora-v2t ARGV`` in this process and write its exit status and peak memory to ``stats_file``."""
    import torch

    from lora_v2t.cli import main as cli_main

    rc = 1
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        stats = {"rc": rc, "peak_rss_gib": gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
        if torch.cuda.is_available():
            stats |= {
                "torch_peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
                "torch_peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
            }
        Path(stats_file).write_text(json.dumps(stats))
    return rc


class EndToEnd(BenchState):
    """Section (a): ``section_e2e`` runs the CLI commands one by one, ``table_e2e`` reports them."""

    def run_cli(self, name: str, argv: list[str]) -> dict:
        stats_file = self.work / f"cli-{name}.json"
        log_file = self.work / f"cli-{name}.log"
        stats_file.unlink(missing_ok=True)
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(
                [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
        )
        poller = SmiPoller() if self.cuda else None
        start = time.perf_counter()
        with open(log_file, "w", encoding="utf-8") as handle:
            proc = subprocess.run(
                [sys.executable, str(SCRIPT), "--cli-child", str(stats_file), *argv],
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        wall = time.perf_counter() - start
        record = {
            "step": name,
            "argv": ["lora-v2t", *argv],
            "rc": proc.returncode,
            "wall_s": round(wall, 1),
            "log": str(log_file),
        }
        if poller is not None:
            record |= poller.stop()
        if stats_file.exists():
            record |= {k: v for k, v in json.loads(stats_file.read_text()).items() if k != "rc"}
        output = log_file.read_text(encoding="utf-8", errors="replace")
        if proc.returncode != 0:
            record["output_tail"] = output[-3000:]
        record["_output"] = output
        found = re.search(r"peak memory: ([\d.]+) GiB measured, ([\d.]+) GiB estimated", output)
        if found:  # the trainer's own check of its estimate against its measured peak
            record["trainer_peak_measured_gib"], record["trainer_peak_estimated_gib"] = map(float, found.groups())
        peak = record.get("torch_peak_allocated_gib")
        log(
            f"[e2e] {name:<9} rc {proc.returncode}  {wall:6.1f} s"
            + (f"  torch peak {peak:.2f} GiB" if peak is not None else "")
            + (f"  nvidia-smi peak {record['nvidia_smi_peak_mib']} MiB" if record.get("nvidia_smi_peak_mib") else "")
            + (f"  trainer: {record['trainer_peak_estimated_gib']} GiB estimated" if found else "")
        )
        return record

    def section_e2e(self) -> dict:
        s = self.shapes
        steps = self.args.e2e_steps or s["e2e_steps"]
        more = steps + s["e2e_more"]
        runs = self.work / "e2e-runs"
        shutil.rmtree(runs, ignore_errors=True)
        final = runs / "e2e" / "final"
        common = [
            f"--backbone.name={self.backbone}",
            f"--encoder.spec={self.encoder}",
            f"--data.train={self.corpus}",
            f"--data.val_size={s['val_size']}",
            f"--data.cache_dir={self.work / 'e2e-cache'}",
            f"--training.output_dir={runs}",
            "--training.run_name=e2e",
            f"--training.log_every={max(1, steps // 3)}",
            "--training.num_samples=2",
            "--no-progress",
        ]
        if self.smoke:  # tiny batches; bitsandbytes' 8-bit is a CUDA feature, so the CPU trains unquantized
            common += ["--training.batch_size=2", "--data.max_tokens=8", "--backbone.quantization=none"]
        decode = ["--max-new-tokens", "8"] if self.smoke else []
        texts = self.sentences[s["corpus"] : s["corpus"] + 4]
        section = {"recipe": RECIPE, "train_steps": steps, "resume_to": more, "overrides": common, "steps": []}
        self.results["e2e"] = section
        plan = [
            (
                "train",
                [
                    "train",
                    RECIPE,
                    *common,
                    f"--training.max_steps={steps}",
                    f"--training.eval_every={steps}",
                    f"--training.save_every={steps}",
                ],
            ),
            ("info", ["info", str(final)]),
            (
                "generate",
                [
                    "generate",
                    "--adapter",
                    str(final),
                    "--text",
                    *texts,
                    "--rerank",
                    "--num-beams",
                    "4",
                    "--num-return-sequences",
                    "4",
                    "--json",
                    *decode,
                ],
            ),
            (
                "evaluate",
                [
                    "evaluate",
                    "--adapter",
                    str(final),
                    "--data",
                    str(self.dev),
                    "--limit",
                    str(s["eval_limit"]),
                    "--rerank",
                    "4",
                    "--resamples",
                    "100",
                    "--no-progress",
                    "--out",
                    str(self.work / "e2e-eval"),
                    "--overwrite",
                    *decode,
                ],
            ),
            (
                "resume",
                [
                    "train",
                    RECIPE,
                    *common,
                    "--resume",
                    f"--training.max_steps={more}",
                    f"--training.eval_every={more}",
                    f"--training.save_every={more}",
                ],
            ),
        ]
        for name, argv in plan:
            record = self.run_cli(name, argv)
            output = record.pop("_output")
            record["checks"] = self.check_cli(name, record, output, final, len(texts), steps, more)
            section["steps"].append(record)
            self.save()
            if name == "train" and record["rc"] != 0:
                log("[e2e] training failed: skipping the commands that need its adapter")
                break
        done = section["steps"]
        section["ok"] = len(done) == len(plan) and all(r["rc"] == 0 and all(r["checks"].values()) for r in done)
        peaks = [r["torch_peak_allocated_gib"] for r in done if r.get("torch_peak_allocated_gib") is not None]
        smi = [r["nvidia_smi_peak_mib"] for r in done if r.get("nvidia_smi_peak_mib") is not None]
        section["peak_torch_allocated_gib"] = max(peaks) if peaks else None
        section["peak_nvidia_smi_mib"] = max(smi) if smi else None
        section["peak_memory_method"] = (
            "torch.cuda.max_memory_allocated of each child (it runs lora_v2t.cli.main in process), plus the GPU's "
            "memory.used polled by nvidia-smi every 200 ms (all processes, CUDA context included)"
            if self.cuda
            else "peak RSS of each child (CPU smoke run)"
        )
        return section

    def check_cli(self, name: str, record: dict, output: str, final: Path, n_texts: int, steps: int, more: int) -> dict:
        checks = {"exit_0": record["rc"] == 0}
        if record["rc"] != 0:
            return checks
        if name in ("train", "resume"):
            config = json.loads((final / "v2t_config.json").read_text())
            want = steps if name == "train" else more
            checks["final_steps"] = config.get("training", {}).get("steps") == want
            rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
            train_rows = [r for r in rows if r.get("kind") == "train"]
            evals = [r for r in rows if r.get("kind") == "eval"]
            if train_rows:  # the last logging window: after warm-up, before the evaluation
                record["ms_per_step_last_window"] = round(train_rows[-1]["ms_per_step"], 1)
                record["train_loss_last"] = round(train_rows[-1]["loss"], 4)
            if evals:
                record["val_loss"] = round(evals[-1]["val_loss"], 4)
        elif name == "info":
            checks["describes_base"] = str(self.shapes["vocab"]) in output and "LoRA" in output
        elif name == "generate":
            lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
            checks["one_reranked_line_per_text"] = len(lines) == n_texts and all("cosine" in r for r in lines)
            record["sample"] = lines[:2]
        elif name == "evaluate":
            summary = self.work / "e2e-eval" / "summary.json"
            checks["summary_written"] = summary.exists()
        return checks

    @staticmethod
    def table_e2e(e: dict) -> None:
        """Section (a)'s table for the report at the end."""
        log(
            f"\n(a) default recipe through the CLI: {'OK' if e.get('ok') else 'FAILED'}; "
            f"peak torch allocated {e.get('peak_torch_allocated_gib')} GiB, "
            f"nvidia-smi {e.get('peak_nvidia_smi_mib')} MiB"
        )
        log(f"  {'command':<10}{'rc':>4}{'wall s':>9}{'torch peak GiB':>16}{'smi peak MiB':>14}  checks")
        for x in e.get("steps", []):
            failed = [k for k, v in x["checks"].items() if not v]
            verdict = "ok" if not failed else "FAILED " + ",".join(failed)
            log(
                f"  {x['step']:<10}{x['rc']:>4}{x['wall_s']:>9.1f}{str(x.get('torch_peak_allocated_gib', '-')):>16}"
                f"{str(x.get('nvidia_smi_peak_mib', '-')):>14}  {verdict}"
                + (f"  {x['ms_per_step_last_window']} ms/step" if "ms_per_step_last_window" in x else "")
            )
