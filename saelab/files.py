"""Atomic writes for the whole package: a reader sees the old file or folder, or the new one, never a part.

Everything is written beside its target, in the same folder, under a temp name that says who wrote
it (`.<name>.saelab-tmp-<pid>-<8 hex>`), then renamed into place. A temp left by a process that died
(kill -9, power loss) or by a write of this process that raised is removed by the next write of the
same target; the temps of writes in progress (this process's or a live one's) are left alone.

    atomic_write_text(path, text)            one text file (cfg.json, a card, a notebook)
    with atomic_file(path) as tmp: ...       one file written by a library call (save_file(..., tmp))
    with atomic_folder(path) as tmp: ...     a whole folder, swapped in at once (an SAE folder, a run)
    make_temp_dir(parent, prefix)            a private folder named with this pid (spilled rows);
    remove_temp(path)                        its removal
    reclaim_stale(parent, prefix)            remove the temps of `prefix` whose writer is gone
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import warnings
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Iterator

TEMP_TAG = ".saelab-tmp-"
_ACTIVE: set[str] = set()   # temps this process is writing now (never reclaimed)
_RENAME_EXCHANGE = 2        # linux renameat2 flag: swap two paths atomically


def _target(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path: expected a file or folder path (str or Path), got {type(path).__name__} {path!r}")
    return Path(path)


def temp_prefix(target: Path) -> str:
    """The name prefix of every temp written for `target`: `.<name>.saelab-tmp-`."""
    return f".{target.name}{TEMP_TAG}"


def owner_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def reclaim_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the entries `parent/<prefix><pid>-<hex>` left by a dead process, or by a write of this
    process that did not finish; returns what was removed. Missing `parent`: nothing to do."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[0-9a-f]{8}")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or entry.path in _ACTIVE:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and owner_alive(pid):
            continue
        _remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=_make_writable_and_retry)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _make_writable_and_retry(func, failed: str, _exc_info) -> None:
    """rmtree's error handler: a folder its owner made read-only (mode 555, e.g. an old SAE folder) is
    made writable, then the removal is tried again; what still fails stays (see `_swapped_in`)."""
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)


def _new_temp(parent: Path, prefix: str) -> Path:
    path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    _ACTIVE.add(str(path))
    return path


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. folders cannot be opened on Windows: durability is best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path) -> Iterator[Path]:
    """Yield a temp path beside `path`; write the file there; on success it replaces `path` in one
    rename (after fsync), on any exception it is removed and `path` is untouched. A failed write
    (permissions, full disk) is a WriteError naming `path`."""
    target = _target(path)
    if target.is_dir():
        raise ValueError(f"path: expected a file, got the existing folder {target}")
    with naming_target(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        reclaim_stale(target.parent, temp_prefix(target))
    tmp = _new_temp(target.parent, temp_prefix(target))
    try:
        with naming_target(target):
            yield tmp
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync(target.parent, directory=True)
    finally:
        _ACTIVE.discard(str(tmp))
        _remove(tmp)  # nothing there after a successful replace


def atomic_write_text(path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the file system cannot, and nothing was changed."""
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if os.name == "posix" else None
    if func is None:
        return False
    at_cwd = -100
    if func(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_folder(path, replaceable: Iterable[str] | Callable[[Path], list[str]] = (),
                  lock: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; fill it; on success it takes the place of `path`.

    An existing `path` is replaced whole, and only when it is empty or holds nothing but names
    matching `replaceable` (names or fnmatch patterns; or a function of the folder returning what in it
    must not be deleted; so a mistyped path never deletes anyone's files). The swap is one atomic
    exchange where the system has it (Linux); elsewhere two renames, between which `path` is briefly
    absent (a kill at that instant leaves the old folder under a temp name, which the next write
    removes). On any exception the temp folder is removed and `path` is untouched. With `lock`, the
    write holds `writer_lock(path)` throughout: a second writer of `path` is refused.
    """
    target = _target(path)
    with contextlib.ExitStack() as held:
        with naming_target(target):   # the folder's own steps name it; the body's errors are the body's
            target.parent.mkdir(parents=True, exist_ok=True)
            if lock:
                held.enter_context(writer_lock(target))
        _check_replaceable(target, replaceable)
        with naming_target(target):
            reclaim_stale(target.parent, temp_prefix(target))
        tmp = _new_temp(target.parent, temp_prefix(target))
        with _swapped_in(tmp, target):
            yield tmp


def _check_replaceable(target: Path, replaceable) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"path: expected a folder, got the existing file {target}")
    if not target.is_dir():
        return
    if callable(replaceable):
        foreign = replaceable(target)
    else:
        patterns = list(replaceable)
        foreign = sorted(p.name for p in target.iterdir() if not any(fnmatch(p.name, pat) for pat in patterns))
    if foreign:
        raise ValueError(f"path: {target} exists and holds {foreign[:5]}, which this save would delete; "
                         f"save into a new folder, or remove them first")


@contextlib.contextmanager
def _swapped_in(tmp: Path, target: Path) -> Iterator[None]:
    """Make the folder `tmp`; after the body, swap it in at `target`; remove what is left at `tmp`."""
    try:
        with naming_target(target):
            tmp.mkdir()
        yield
        with naming_target(target):
            for item in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
                _fsync(item, directory=item.is_dir())
            _fsync(tmp, directory=True)
            _swap_in(tmp, target)
            _fsync(target.parent, directory=True)
    finally:
        _ACTIVE.discard(str(tmp))
        _remove(tmp)  # after a swap: the old folder; after an error: the unfinished new one
        if os.path.lexists(tmp):
            warnings.warn(f"{tmp} (the previous {target.name} or an unfinished one) could not be removed: remove "
                          f"it by hand", RuntimeWarning, stacklevel=3)


def _swap_in(new: Path, target: Path) -> None:
    """Put folder `new` at `target`; the old `target` (if any) ends up at `new`'s name."""
    if not target.exists():
        os.rename(new, target)
        return
    if exchange(new, target):
        return
    old = _new_temp(target.parent, temp_prefix(target))
    try:
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)  # put the old folder back
            raise
        os.rename(old, new)
    finally:
        _ACTIVE.discard(str(old))


@contextlib.contextmanager
def writer_lock(target: Path) -> Iterator[Path]:
    """Hold `.<name>.saelab-lock` beside `target`, a file holding this process's pid, while writing
    `target`: a second writer gets RuntimeError naming the owner. A lock whose process is gone
    (kill -9) is reclaimed. The lock file is created whole (written under a temp name, then hard-linked
    into place), so no one ever reads a lock without its pid."""
    lock = target.parent / f".{target.name}.saelab-lock"
    target.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(target.parent, temp_prefix(lock))
    tmp = _new_temp(target.parent, temp_prefix(lock))
    try:
        tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
        _take(tmp, lock, target)
    finally:
        _ACTIVE.discard(str(tmp))
        _remove(tmp)
    try:
        yield lock
    finally:
        if _lock_owner(lock) == os.getpid():
            _remove(lock)


def _take(tmp: Path, lock: Path, target: Path) -> None:
    for _ in range(3):
        try:
            _place_lock(tmp, lock)
            return
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner_alive(owner):
                raise RuntimeError(f"{target} is being written by process {owner} (lock {lock}); wait for it "
                                   f"to finish, or write somewhere else") from None
            _remove(lock)   # its writer is gone
    raise RuntimeError(f"{target}: could not take the lock {lock} (other writers keep taking it)")


def _place_lock(tmp: Path, lock: Path) -> None:
    """Put the pid file `tmp` at `lock` unless `lock` exists (FileExistsError): a hard link, whole at once;
    where the file system has no hard links (e.g. some network and FUSE mounts), an exclusive create
    that writes the same pid (a reader in between sees no pid and takes the lock as stale)."""
    try:
        os.link(tmp, lock)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(tmp.read_text(encoding="ascii"))


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def not_listed(folder: Path, listed: set[str]) -> list[str]:
    """The entries under `folder` (relative POSIX paths, in walking order) that are neither a `listed`
    file nor a folder holding one; a symlink counts as a file and is not followed."""
    holding = {"/".join(f.split("/")[:i]) for f in listed for i in range(1, f.count("/") + 1)}
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in dirs + sorted(files):
            path = Path(root, name)
            kind = listed if name in files or path.is_symlink() else holding
            if path.relative_to(folder).as_posix() not in kind:
                found.append(path.relative_to(folder).as_posix())
    return found


class WriteError(OSError, RuntimeError):
    """A write that failed (a folder without write permission, a read-only file system...), with a
    message naming the file or folder being written; a RuntimeError too, so the front doors print it
    as one line."""

    def __str__(self) -> str:
        return self.strerror


class NoSpaceError(WriteError):
    """A full disk (errno ENOSPC) with a message naming the folder, the bytes needed where known and
    the bytes free (`no_space`)."""


@contextlib.contextmanager
def naming_target(target: Path) -> Iterator[None]:
    """An OSError raised inside becomes a WriteError naming `target` (NoSpaceError for a full disk)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        if e.errno in NO_SPACE_ERRNOS:
            raise no_space(target.parent, target.name) from None
        raise WriteError(e.errno, f"cannot write {target}: {e.strerror or e}") from None


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds (or would hold) `folder`."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def no_space(folder: Path, what: str, needed: int | None = None, *, argument: str = "", named: str = "",
             hint: str = "") -> NoSpaceError:
    """The one full-disk error: NoSpaceError naming `folder` (as `named`, if given), what was being
    written, the bytes needed (if known) and the bytes free there; `argument`, the caller's argument
    that chose the folder, starts the message; `hint`, what to do, ends it."""
    need = f"need {needed:,} bytes ({needed / 2**20:.1f} MiB), " if needed else ""
    return NoSpaceError(errno.ENOSPC, f"{argument + ': ' if argument else ''}not enough free space in "
                                      f"{named or folder} for {what}: {need}{free_bytes(folder):,} bytes free"
                                      f"{'; ' + hint if hint else ''}")


def check_free_space(folder: Path, what: str, needed: int, **named) -> None:
    """NoSpaceError (see `no_space`, which takes `named`) unless `folder`'s file system has `needed` bytes free."""
    if free_bytes(folder) < needed:
        raise no_space(folder, what, needed, **named)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """Create a fresh folder `parent/<prefix><pid>-<hex>` for this process, after removing those
    of `prefix` whose process is gone; remove it with `remove_temp` when done."""
    parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(parent, prefix)
    path = _new_temp(parent, prefix)
    path.mkdir()
    return path


def remove_temp(path) -> None:
    """Remove a folder or file made by `make_temp_dir` (nothing if it is gone)."""
    _ACTIVE.discard(str(path))
    _remove(Path(path))
