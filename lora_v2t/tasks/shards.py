"""An audit over several processes (``accelerate launch``): each process inverts its own contiguous rows into its
own resumable part, ``DIR/parts/inverted-R-of-W.jsonl``; the main process extracts before and reports after, from
all the parts. In one process there is one part, ``DIR/inverted.jsonl``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from accelerate import PartialState

PARTS = "parts"


@dataclass
class Shard:
    """This process's place among the audit's processes; ``state`` is accelerate's PartialState when several."""

    rank: int = 0
    world: int = 1
    state: PartialState | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        """The device of this process's rank (its GPU, or the CPU); None in a single process (the usual choice)."""
        if self.state is None:
            return None
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    def wait(self) -> None:
        """Wait until every process gets here (nothing to wait for in a single process)."""
        if self.state is not None:
            self.state.wait_for_everyone()


def current_shard() -> Shard:
    """This process's shard: under ``accelerate launch`` (WORLD_SIZE > 1) its rank among the processes."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # on CPUs only, processes meet through gloo
    return Shard(state.process_index, state.num_processes, state)


def bounds(rows: int, world: int) -> list[tuple[int, int]]:
    """Each process's rows [start, stop): contiguous, sizes differing by at most one."""
    edges = np.linspace(0, rows, world + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def part_files(folder: Path, vectors: str, inverted: str, rank: int, world: int) -> tuple[Path, Path]:
    """The vectors a process inverts and the rows it writes: DIR's own files in a single process."""
    if world == 1:
        return folder / vectors, folder / inverted
    tag = f"-{rank}-of-{world}"
    ours, theirs = Path(vectors), Path(inverted)
    return (folder / PARTS / f"{ours.stem}{tag}{ours.suffix}", folder / PARTS / f"{theirs.stem}{tag}{theirs.suffix}")


def write_part(all_vectors: Path, part: Path, start: int, stop: int) -> None:
    """Copy rows [start, stop) of the extracted vectors into this process's part (once; renamed into place)."""
    if part.is_file():
        return
    part.parent.mkdir(parents=True, exist_ok=True)
    rows = np.load(all_vectors, mmap_mode="r")[start:stop]
    tmp = part.with_name(part.stem + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(rows))
    os.replace(tmp, part)


def parts(folder: Path, vectors: str, inverted: str, rows: int, world: int) -> list[tuple[Path, int]]:
    """Every process's rows file with the offset of its first row, in row order."""
    return [
        (part_files(folder, vectors, inverted, rank, world)[1], start)
        for rank, (start, stop) in enumerate(bounds(rows, world))
        if stop > start
    ]
