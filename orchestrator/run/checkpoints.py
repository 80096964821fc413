"""A run's checkpoints kept by the run itself, where Ray Train keeps them: `checkpoint_NNNNNNN/` folders in the
run's folder of the Ray storage (a local folder or S3), the newest `train.keep_checkpoints` of them.

A run trained in one process (a sweep's one-worker trial, `orchestrator.run.in_process`) has no Ray Train controller
to persist and restore its checkpoints (Ray Train's local mode keeps the last one in memory only). A checkpoint
counts once its `checkpoint.pt` is there: each file is uploaded under a temporary name and then renamed (on S3
copied, and one object appears whole or not at all), so a process killed mid-upload leaves nothing a restore would
take.
"""

from __future__ import annotations

import os
import re

from imm.training.checkpoint import CHECKPOINT_FILE
from orchestrator.infra.storage import RayStorage

FOLDER_RE = re.compile(r"^checkpoint_(\d+)$")


class CheckpointFolder:
    def __init__(self, storage: RayStorage, name: str, keep: int):
        import pyarrow.fs

        self.fs = storage.filesystem() or pyarrow.fs.LocalFileSystem()
        self.root = f"{storage.path.rstrip('/')}/{name}"
        self.keep = keep

    def _folders(self) -> tuple[list[str], list[str]]:
        """(every checkpoint folder, those holding a whole checkpoint), oldest first."""
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True, recursive=True))
        folders, whole = set(), set()
        for info in infos:
            rel = info.path[len(self.root):].strip("/").split("/")
            if FOLDER_RE.match(rel[0]):
                folders.add(rel[0])
                if rel[1:] == [CHECKPOINT_FILE] and info.type == pyarrow.fs.FileType.File:
                    whole.add(rel[0])
        return sorted(folders), sorted(whole)

    def latest(self):
        """The newest whole checkpoint (a `ray.train.Checkpoint`), or None."""
        from ray.train import Checkpoint

        whole = self._folders()[1]
        return Checkpoint(f"{self.root}/{whole[-1]}", filesystem=self.fs) if whole else None

    def save(self, step: int, local_dir: str):
        """Upload the checkpoint folder `local_dir` as step `step`'s, then delete all but the newest `keep`;
        returns it as a `ray.train.Checkpoint` once it is whole."""
        import pyarrow.fs
        from ray.train import Checkpoint

        dest = f"{self.root}/checkpoint_{step:07d}"
        self.fs.create_dir(dest)
        local = pyarrow.fs.LocalFileSystem()
        for name in sorted(os.listdir(local_dir), key=lambda n: n == CHECKPOINT_FILE):  # the one that counts last
            part = f"{dest}/.{name}.part"
            pyarrow.fs.copy_files(os.path.join(local_dir, name), part, source_filesystem=local,
                                  destination_filesystem=self.fs)
            self.fs.move(part, f"{dest}/{name}")
        folders, whole = self._folders()
        oldest_kept = whole[-self.keep] if len(whole) >= self.keep else None
        for folder in folders:
            if oldest_kept and folder < oldest_kept:
                self.fs.delete_dir(f"{self.root}/{folder}")
        return Checkpoint(dest, filesystem=self.fs)
