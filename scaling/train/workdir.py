"""Which run owns a workdir, and what data it was trained on (checkpointing.py re-exports these names).

- ``run_fingerprint.json`` records the configuration that owns a workdir; another configuration is refused
  (`check_workdir`) unless ``--overwrite`` (old outputs moved to previous-<time>/, `claim_workdir`) or
  ``--resume_changed_config`` (hyperparameters changed, never the structure of the saved state).
- The data identity (`data_identity`: corpus and vocabulary hashes) is part of the fingerprint and of every
  checkpoint's record, so a checkpoint never resumes onto other data.
- A URL (gs://, ...) or an unwritable workdir is refused before any set-up (`local_workdir`, `check_writable`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from scaling.core import fileio

# --- workdir ownership ---------------------------------------------------------------------------

FINGERPRINT_FILE = "run_fingerprint.json"


class WorkdirConfigError(ValueError):
    """The workdir holds a run with a different configuration (refused unless overwrite)."""


class WorkdirNotWritableError(ValueError):
    """The workdir (or the directory it would be created in) cannot be written: refused before any setup."""


# --- what data a run was trained on ----------------------------------------------------------------

# Fingerprint keys (beside config.fingerprint_fields) naming the data's content, from LMData.manifest:
# the train and validation corpus hashes (file contents, or TFDS name/split/size) and the vocabulary
# hash (the SentencePiece model file's sha256, or the byte vocabulary). The DataConfig fields alone
# name file *patterns*: a shard added to a glob trains a new vocabulary under the same config.
DATA_IDENTITY_PREFIX = "data_identity."
DATA_IDENTITY_KEYS = (("corpus_hash_train", "data_identity.corpus_train"),
                      ("corpus_hash_validation", "data_identity.corpus_validation"),
                      ("vocab_hash", "data_identity.vocabulary"))
# A different vocabulary makes the saved embedding rows mean other tokens: refused even with
# --resume_changed_config (a changed corpus under the same vocabulary is accepted with it).
DATA_IDENTITY_STRUCTURAL = ("data_identity.vocabulary",)


def data_identity(data: Any) -> dict:
    """{data_identity.<name>: hash} from an LMData's manifest (empty for data without hashes, e.g. tests')."""
    manifest = getattr(data, "manifest", None) or {}
    return {key: manifest[name] for name, key in DATA_IDENTITY_KEYS if manifest.get(name) is not None}


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_workdir(path: str, what: str = "workdir") -> str:
    """The absolute local path of a run directory; a URL (gs://, s3://, ...) is refused.

    The trainer needs POSIX semantics there (atomic os.replace of logs, flock of sweep roots,
    os.path arithmetic): object storage is not supported. Train into a local or network filesystem
    (NFS, Filestore, Lustre) and copy the results to the bucket afterwards.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise WorkdirNotWritableError(f"{what} must be a directory path, got {path!r}")
    path = os.fspath(path)
    if _URL.match(path):
        raise WorkdirNotWritableError(
            f"{what} {path!r} is a URL: object storage (gs://, s3://, ...) is not supported as a {what} (the "
            f"trainer needs a POSIX filesystem: atomic renames, file locks); use a local or network-mounted "
            f"directory (NFS, Filestore, Lustre; a bucket mounted with gcsfuse is not enough) and copy the "
            f"results to the bucket afterwards")
    return os.path.abspath(os.path.expanduser(path))


def check_writable(workdir: str) -> None:
    """Refuses a workdir that cannot be written (or created), naming the directory, before any setup.

    Probes by creating and removing a file (permission bits say nothing for root, nor for read-only
    mounts) in the workdir (and its checkpoints/ if present), or in the nearest existing ancestor
    when the workdir does not exist yet (nothing is created then).
    """
    probe = workdir
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise WorkdirNotWritableError(f"cannot create workdir {workdir}: {probe} is not a directory; "
                                      f"pass another --workdir")
    targets = [probe] + [p for p in (os.path.join(workdir, "checkpoints"),) if probe == workdir and os.path.isdir(p)]
    for directory in targets:
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=".write-test-")
            os.close(fd)
            os.remove(name)
        except OSError as e:
            where = f"workdir {workdir}" if directory == workdir else (
                f"{directory} (inside workdir {workdir})" if directory.startswith(workdir) else
                f"{directory} (where workdir {workdir} would be created)")
            raise WorkdirNotWritableError(f"cannot write to {where}: {e.strerror or e}; fix its permissions "
                                          f"or pass another --workdir (nothing was started)") from None


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=repr).encode()).hexdigest()


def _describe_diff(old: dict, new: dict, limit: int = 8) -> list[str]:
    keys = sorted(set(old) | set(new))
    diff = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]
    return diff[:limit] + ([f"... and {len(diff) - limit} more"] if len(diff) > limit else [])


def has_outputs(workdir: str) -> bool:
    return os.path.isdir(workdir) and any(not n.startswith("previous-") for n in os.listdir(workdir))


def check_workdir(workdir: str, fields: dict, *, overwrite: bool = False,
                  resume_changed_config: bool = False, structural: tuple = ()) -> None:
    """Refuses a workdir that belongs to a run with different settings (read-only; call before setup).

    ``fields`` is TrainConfig's fingerprint dict (config.fingerprint_fields). A workdir written before
    fingerprints existed (outputs but no file) is adopted. ``resume_changed_config`` accepts changed
    hyperparameters (e.g. a lower learning rate after a NaN) but never structural ones (``structural``
    key prefixes: model shape, optimizer) that the saved state could not restore into.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirConfigError(f"workdir {workdir} exists and is not a directory; pass another --workdir")
    check_writable(workdir)
    path = os.path.join(workdir, FINGERPRINT_FILE)
    if overwrite or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            owner = json.load(f)
        old = dict(owner["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirConfigError(f"{path} is unreadable ({e}); it records which configuration owns the "
                                 f"workdir. Rerun with --overwrite to move the old outputs aside and start "
                                 f"fresh") from None
    # The data identity is known only once the data is built (the trainer checks twice: before and after
    # setup). Before, or for a workdir written before identities were recorded, compare the rest.
    has_identity = lambda d: any(k.startswith(DATA_IDENTITY_PREFIX) for k in d)  # noqa: E731
    if not has_identity(fields) or not has_identity(old):
        old = {k: v for k, v in old.items() if not k.startswith(DATA_IDENTITY_PREFIX)}
        fields = {k: v for k, v in fields.items() if not k.startswith(DATA_IDENTITY_PREFIX)}
    if fingerprint(old) == fingerprint(fields):
        return
    diff = _describe_diff(old, fields)
    changed = [k for k in set(old) | set(fields) if old.get(k) != fields.get(k)]
    structural = tuple(structural) + DATA_IDENTITY_STRUCTURAL
    blocking = [k for k in changed if k.startswith(structural)] if resume_changed_config else changed
    if blocking:
        data_changed = any(k.startswith(DATA_IDENTITY_PREFIX) for k in blocking)
        cause = ("the corpus files or the vocabulary trained on them changed (e.g. a file added to a glob "
                 "trains a new vocabulary); " if data_changed else "")
        hint = cause + ("these settings change the shape of the saved state, so it cannot be resumed; "
                        if resume_changed_config else
                        "rerun with --overwrite to move the old outputs aside (kept under previous-<time>/) and "
                        "start fresh, use --resume_changed_config to resume it with changed hyperparameters, or ")
        raise WorkdirConfigError(
            f"workdir {workdir} belongs to a run with a different configuration ({'; '.join(diff)}); "
            f"refusing to mix two runs in one workdir: {hint}pick another --workdir")


def claim_workdir(workdir: str, fields: dict, *, overwrite: bool = False, resume_changed_config: bool = False,
                  lead: bool = True) -> str | None:
    """Creates/claims the workdir for this configuration (after setup validated the config).

    With ``overwrite`` the previous outputs are moved into ``workdir/previous-<UTC time>/`` (nothing is
    deleted) so the run starts fresh; returns that directory (or None). Writes run_fingerprint.json.
    """
    os.makedirs(workdir, exist_ok=True)
    if not lead:
        return None
    moved = None
    if overwrite and has_outputs(workdir):
        moved = os.path.join(workdir, "previous-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        suffix = 0
        while os.path.exists(moved):
            suffix += 1
            moved = f"{moved.rsplit('~', 1)[0]}~{suffix}"
        os.makedirs(moved)
        for name in os.listdir(workdir):
            if not name.startswith("previous-"):
                shutil.move(os.path.join(workdir, name), os.path.join(moved, name))
        print(f"--overwrite: moved the previous outputs of {workdir} to {moved}", file=sys.stderr, flush=True)
    path = os.path.join(workdir, FINGERPRINT_FILE)
    record = {"fingerprint": fingerprint(fields), "config": fields}
    if os.path.exists(path) and not moved:
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}
        if previous.get("fingerprint") == record["fingerprint"]:
            return moved
        if resume_changed_config:  # keep the history of accepted changes
            record["history"] = previous.get("history", []) + [
                {"fingerprint": previous.get("fingerprint"), "config": previous.get("config"),
                 "replaced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]

    fileio.write_json_atomic(path, record)
    return moved
