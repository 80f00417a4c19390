"""Save and restore a model and its training state (fvcore's ``Checkpointer`` API).

``Checkpointer`` writes ``{"model": state_dict, <checkpointable>: state_dict, **extra}`` to
``save_dir/<name>.pth`` and records the file name in ``save_dir/last_checkpoint``; both
writes are atomic (temporary file, flush, fsync, rename), so a crash mid-save leaves the
previous checkpoint readable. Loading uses ``torch.load(weights_only=True)``, skips
tensors whose shape differs from the model's, and reports missing, unexpected and
shape-mismatched keys in one table.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from tabulate import tabulate
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from heron.utils.file_io import PathManager
from heron.utils.safe_pickle import UnsafePickleError, torch_numpy_safe_globals

__all__ = [
    "Checkpointer",
    "PeriodicCheckpointer",
    "get_missing_parameters_message",
    "get_unexpected_parameters_message",
]

_LAST_CHECKPOINT = "last_checkpoint"
_NUM_SAMPLE_KEYS = 5  # how many names the "matches nothing" error shows from each side


class _IncompatibleKeys(NamedTuple):
    """What ``Checkpointer._load_model`` could not load.

    missing_keys: model keys with no value in the checkpoint.
    unexpected_keys: checkpoint keys the model does not have.
    incorrect_shapes: (key, shape in checkpoint, shape in model) of keys that were skipped.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


class Checkpointer:
    """Saves and loads a model together with other objects that have a ``state_dict``.

    Args:
        model: the model; a (Distributed)DataParallel wrapper is unwrapped.
        save_dir: directory that holds the checkpoints and ``last_checkpoint``; "" disables
            saving.
        save_to_disk: False disables saving (e.g. on non-main processes).
        checkpointables: objects with ``state_dict()`` and ``load_state_dict()`` (optimizer,
            scheduler, ...), saved and loaded under their keyword names.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        **checkpointables: Any,
    ) -> None:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        self.model = model
        self.checkpointables: dict[str, Any] = {}
        for key, obj in checkpointables.items():
            self.add_checkpointable(key, obj)
        self.logger: logging.Logger = logging.getLogger(__name__)
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.path_manager = PathManager

    def add_checkpointable(self, key: str, checkpointable: Any) -> None:
        """Track one more object, saved and loaded under ``key``.

        Raises:
            KeyError: ``key`` is already used.
            TypeError: the object has no ``state_dict`` method.
        """
        if key in self.checkpointables or key == "model":
            raise KeyError(f"Checkpointable key {key!r} is already used in the Checkpointer")
        if not callable(getattr(checkpointable, "state_dict", None)):
            raise TypeError(
                f"Checkpointable {key!r} must have a state_dict() method, "
                f"got {type(checkpointable).__name__}"
            )
        self.checkpointables[key] = checkpointable

    # ------------------------------------------------------------------ saving

    def save(self, name: str, **kwargs: Any) -> None:
        """Write the model, the checkpointables and ``kwargs`` to ``save_dir/name.pth``.

        Nothing happens when ``save_dir`` is empty or ``save_to_disk`` is False. The file
        appears whole or not at all, then ``last_checkpoint`` is pointed at it.

        Args:
            name: file name without the ".pth" extension (no directory part).
            kwargs: extra picklable data, e.g. ``iteration=1000``.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"Checkpoint name must not contain a directory, got {name!r}")
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        self._write_atomic(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Record ``last_filename_basename`` in ``save_dir/last_checkpoint`` (atomically)."""
        save_file = os.path.join(self.save_dir, _LAST_CHECKPOINT)
        self._write_atomic(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def _write_atomic(self, path: str, write: Callable[[IO[Any]], Any], mode: str) -> None:
        """Run ``write`` on a temporary file next to ``path``, then rename it to ``path``.

        Other filesystems (``s3://`` ...) have no rename-into-place; they are written
        through ``path_manager.open`` directly.
        """
        if "://" in path and not path.startswith("file://"):
            with self.path_manager.open(path, mode) as f:
                write(f)
            return
        path = path[len("file://") :] if path.startswith("file://") else path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints are ordinary files
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_directory(directory)

    # ------------------------------------------------------------------ finding checkpoints

    def has_checkpoint(self) -> bool:
        """Return whether ``save_dir`` has a ``last_checkpoint`` record."""
        return self.path_manager.exists(os.path.join(self.save_dir, _LAST_CHECKPOINT))

    def get_checkpoint_file(self) -> str:
        """Return the path of the last saved checkpoint, or "" when none is recorded."""
        save_file = os.path.join(self.save_dir, _LAST_CHECKPOINT)
        try:
            with self.path_manager.open(save_file, "r") as f:
                last_saved = f.read().strip()
        except OSError:
            # e.g. deleted by another process between has_checkpoint() and here
            return ""
        return os.path.join(self.save_dir, last_saved)

    def get_all_checkpoint_files(self) -> list[str]:
        """Return the paths of all ``.pth`` files in ``save_dir``."""
        return [
            os.path.join(self.save_dir, name)
            for name in self.path_manager.ls(self.save_dir)
            if name.endswith(".pth") and self.path_manager.isfile(os.path.join(self.save_dir, name))
        ]

    # ------------------------------------------------------------------ loading

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` if ``resume`` and it exists, else load ``path``.

        Resuming restores the model and every checkpointable; loading ``path`` restores
        only the model.

        Returns:
            Same as :meth:`load`.
        """
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load a checkpoint into the model and the named checkpointables.

        Args:
            path: file path or URL; "" or None loads nothing.
            checkpointables: names of checkpointables to restore; None restores all that the
                file has.

        Returns:
            The rest of the checkpoint (e.g. "iteration" and other data given to
            :meth:`save`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is corrupt, not a checkpoint, or matches none of the
                model's keys.
            KeyError: a name in ``checkpointables`` is not registered.
        """
        if not path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        unknown = [k for k in names if k not in self.checkpointables]
        if unknown:
            raise KeyError(
                f"checkpointables {unknown} are not registered; known: {sorted(self.checkpointables)}"
            )
        self.logger.info("Loading checkpoint from %s", path)
        if not os.path.isfile(path):
            path = self.path_manager.get_local_path(path)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Checkpoint {path} not found: give the path of an existing .pth or .pkl "
                    "file, or a URL (for a config, MODEL.WEIGHTS / --weights)"
                )

        checkpoint = self._load_file(path)
        try:
            incompatible = self._load_model(checkpoint)
        except ValueError as e:  # name the file: the message alone cannot
            raise ValueError(f"Cannot load {path} into the model: {e}") from e
        if incompatible is not None:  # subclasses may return None
            self._log_incompatible_keys(incompatible)

        for key in names:
            if key in checkpoint:
                self.logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _load_file(self, f: str) -> dict[str, Any]:
        """Read a local ``.pth`` file with ``torch.load(weights_only=True)``.

        Returns:
            The loaded dict (a checkpoint with "model", or a bare state_dict).

        Raises:
            FileNotFoundError: ``f`` does not exist.
            UnsafePickleError: the file holds objects other than tensors, containers,
                numbers, strings and numpy arrays.
            ValueError: the file is empty, truncated, corrupt, or does not hold a dict.
        """
        if not os.path.isfile(f):
            raise FileNotFoundError(f"Checkpoint {f} not found")
        try:
            with torch_numpy_safe_globals():
                loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise _explain_unpickling_error(f, e) from e
        except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
            raise ValueError(
                f"Cannot read checkpoint {f}: it is empty, truncated or corrupt "
                f"({type(e).__name__}: {e})"
            ) from e
        if not isinstance(loaded, Mapping):
            raise ValueError(
                f"Checkpoint {f} holds a {type(loaded).__name__}; expected a dict "
                "(a state_dict, or a checkpoint with a 'model' entry)"
            )
        return dict(loaded) if not isinstance(loaded, dict) else loaded

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        """Load ``checkpoint["model"]`` into the model, skipping shape-mismatched tensors.

        A "module." prefix left by (Distributed)DataParallel is stripped, numpy arrays
        become tensors, and the rest loads with ``load_state_dict(strict=False)``.

        Returns:
            The missing, unexpected and incorrect-shape keys.

        Raises:
            KeyError: ``checkpoint`` has no "model" entry.
            ValueError: a value is neither a tensor nor an array, or no checkpoint key
                names a model key.
        """
        if "model" not in checkpoint:
            raise KeyError(
                f"The checkpoint has no 'model' entry; its top-level keys are "
                f"{sorted(map(str, checkpoint))[:10]}"
            )
        checkpoint_state_dict = checkpoint.pop("model")
        self._convert_ndarray_to_tensor(checkpoint_state_dict)
        _strip_prefix_if_present(checkpoint_state_dict, "module.")

        model_state_dict = self.model.state_dict()
        _check_any_key_matches(model_state_dict, checkpoint_state_dict)
        incorrect_shapes = []
        for key in list(checkpoint_state_dict.keys()):
            if key not in model_state_dict:
                continue
            model_param = model_state_dict[key]
            if isinstance(model_param, nn.parameter.UninitializedParameter):
                continue  # lazy modules take their shape from the checkpoint
            shape_model = tuple(model_param.shape)
            shape_checkpoint = tuple(checkpoint_state_dict[key].shape)
            if shape_model != shape_checkpoint:
                incorrect_shapes.append((key, shape_checkpoint, shape_model))
                checkpoint_state_dict.pop(key)
        incompatible = self.model.load_state_dict(checkpoint_state_dict, strict=False)
        # a skipped key is reported once, as a shape mismatch, not again as missing
        skipped = {key for key, _, _ in incorrect_shapes}
        return _IncompatibleKeys(
            missing_keys=[k for k in incompatible.missing_keys if k not in skipped],
            unexpected_keys=list(incompatible.unexpected_keys),
            incorrect_shapes=incorrect_shapes,
        )

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Log one table of shape-mismatched, missing and unexpected keys, as a warning."""
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        rows = [
            ("shape mismatch (not loaded)", key, str(ckpt_shape), str(model_shape))
            for key, ckpt_shape, model_shape in incompatible.incorrect_shapes
        ]
        rows += [("missing in checkpoint", name, "", "") for name in _grouped_names(missing)]
        rows += [
            ("unexpected in checkpoint", name, "", "")
            for name in _grouped_names(incompatible.unexpected_keys)
        ]
        if not rows:
            return
        table = tabulate(
            rows,
            headers=["Problem", "Key(s)", "Shape in checkpoint", "Shape in model"],
            tablefmt="pipe",
        )
        self.logger.warning(
            "The checkpoint does not match the model: %d shape mismatch(es), %d missing, "
            "%d unexpected key(s):\n%s",
            len(incompatible.incorrect_shapes),
            len(missing),
            len(incompatible.unexpected_keys),
            table,
        )

    def _convert_ndarray_to_tensor(self, state_dict: dict[str, Any]) -> None:
        """Replace numpy arrays in ``state_dict`` by tensors, in place.

        Raises:
            ValueError: a value is neither a numpy array nor a tensor.
        """
        for key in list(state_dict.keys()):
            value = state_dict[key]
            if isinstance(value, torch.Tensor):
                continue
            if not isinstance(value, np.ndarray):
                raise ValueError(
                    f"Unsupported type in checkpoint: {key!r} is a {type(value).__name__}, "
                    "expected a torch.Tensor or numpy.ndarray"
                )
            state_dict[key] = torch.from_numpy(np.ascontiguousarray(value))


class PeriodicCheckpointer:
    """Calls ``checkpointer.save`` every ``period`` iterations and at the last one.

    Args:
        checkpointer: the object whose ``save`` is called (usually a :class:`Checkpointer`).
        period: save when ``(iteration + 1) % period == 0``.
        max_iter: when given, "{file_prefix}_final" is saved at iteration ``max_iter - 1``.
        max_to_keep: keep only this many periodic checkpoints, deleting older ones (the
            final checkpoint is never deleted).
        file_prefix: file name prefix.
    """

    def __init__(
        self,
        checkpointer: Any,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
    ) -> None:
        if int(period) < 1:
            raise ValueError(f"period must be a positive integer, got {period}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive integer or None, got {max_to_keep}")
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.recent_checkpoints: list[str] = []
        self.path_manager = getattr(checkpointer, "path_manager", PathManager)
        self.file_prefix = file_prefix

    def step(self, iteration: int, **kwargs: Any) -> None:
        """Save if ``iteration`` (0-based) ends a period or is the last one.

        Args:
            iteration: the current iteration, in [0, max_iter - 1].
            kwargs: extra data to save; "iteration" is added.
        """
        iteration = int(iteration)
        additional_state = {"iteration": iteration, **kwargs}

        if (iteration + 1) % self.period == 0:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **additional_state)
            if self.max_to_keep is not None:
                self.recent_checkpoints.append(self.checkpointer.get_checkpoint_file())
                if len(self.recent_checkpoints) > self.max_to_keep:
                    file_to_delete = self.recent_checkpoints.pop(0)
                    if self.path_manager.exists(file_to_delete) and not file_to_delete.endswith(
                        f"{self.file_prefix}_final.pth"
                    ):
                        self.path_manager.rm(file_to_delete)

        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **additional_state)

    def save(self, name: str, **kwargs: Any) -> None:
        """Save now, outside the schedule; arguments as :meth:`Checkpointer.save`."""
        self.checkpointer.save(name, **kwargs)


# ---------------------------------------------------------------------- helpers


def get_missing_parameters_message(keys: list[str]) -> str:
    """Describe model keys that the checkpoint lacks, grouped by module."""
    return "Some model parameters or buffers are not found in the checkpoint:\n" + "\n".join(
        "  " + name for name in _grouped_names(keys)
    )


def get_unexpected_parameters_message(keys: Iterable[str]) -> str:
    """Describe checkpoint keys that the model does not use, grouped by module."""
    return "The checkpoint state_dict contains keys that are not used by the model:\n" + (
        "\n".join("  " + name for name in _grouped_names(list(keys)))
    )


def _grouped_names(keys: list[str]) -> list[str]:
    """Join keys that share everything up to their last ".": ``a.b.{weight, bias}``."""
    groups: dict[tuple[str, bool], list[str]] = defaultdict(list)
    for key in keys:
        head, dot, tail = key.rpartition(".")
        if dot:
            groups[(head, True)].append(tail)
        else:
            groups[(key, False)] = []
    names = []
    for (head, dotted), tails in groups.items():
        if not dotted:
            names.append(head)
        elif len(tails) == 1:
            names.append(f"{head}.{tails[0]}")
        else:
            names.append(f"{head}.{{{', '.join(tails)}}}")
    return names


def _check_any_key_matches(
    model_state_dict: Mapping[str, Any], checkpoint_state_dict: Mapping[str, Any]
) -> None:
    """Raise when the checkpoint names none of the model's keys (surely the wrong file)."""
    if not model_state_dict or any(k in model_state_dict for k in checkpoint_state_dict):
        return
    expected = list(model_state_dict)[:_NUM_SAMPLE_KEYS]
    found = list(checkpoint_state_dict)[:_NUM_SAMPLE_KEYS]
    raise ValueError(
        "None of the checkpoint's keys match the model's: is this the right checkpoint for "
        f"this model? The model expects e.g. {expected} ({len(model_state_dict)} keys); the "
        f"checkpoint has e.g. {found or '(no keys)'} ({len(checkpoint_state_dict)} keys)."
    )


def _strip_prefix_if_present(state_dict: dict[str, Any], prefix: str) -> None:
    """Remove ``prefix`` from every key (and the ``_metadata`` keys) if all keys have it."""
    keys = sorted(state_dict.keys())
    if not keys or not all(len(key) == 0 or key.startswith(prefix) for key in keys):
        return
    for key in keys:
        state_dict[key[len(prefix) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in list(metadata.keys()):
            # "" is the wrapper's own entry; "module" and "module.x" belong to the model
            if key:
                metadata[key[len(prefix) :]] = metadata.pop(key)


def _filter_reused_missing_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """Drop missing keys whose tensor was loaded under another name (shared modules)."""
    keyset = set(keys)
    names_of: dict[int, set[str]] = defaultdict(set)
    for module_prefix, module in _named_modules_with_dup(model):
        for name, tensor in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            full_name = f"{module_prefix}.{name}" if module_prefix else name
            names_of[id(tensor)].add(full_name)
    for names in names_of.values():
        # one name missing while an alias of the same tensor was loaded: not missing
        if any(n in keyset for n in names) and not all(n in keyset for n in names):
            keyset -= names
    return [k for k in keys if k in keyset]


def _named_modules_with_dup(model: nn.Module, prefix: str = "") -> Iterable[tuple[str, nn.Module]]:
    """``model.named_modules()`` that also yields modules reachable under several names."""
    yield prefix, model
    for name, module in model._modules.items():
        if module is not None:
            yield from _named_modules_with_dup(module, f"{prefix}.{name}" if prefix else name)


def _explain_unpickling_error(f: str, error: pickle.UnpicklingError) -> Exception:
    """Tell a refused object (UnsafePickleError) from a damaged file (ValueError)."""
    message = str(error)
    find_unsafe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    unsafe: list[str] = []
    if find_unsafe is not None:
        try:
            with torch_numpy_safe_globals():
                unsafe = sorted(find_unsafe(f))
        except Exception:  # not a zip checkpoint: the original error says enough
            unsafe = []
    if unsafe:
        return UnsafePickleError(
            f"Refusing to load {f}: it references {unsafe}, which "
            "torch.load(weights_only=True) does not allow (only tensors, containers, numbers, "
            "strings and numpy arrays are). Load it yourself only if you trust its source."
        )
    if "weights only" in message.lower() and "unsupported operand" not in message.lower():
        return UnsafePickleError(
            f"Refusing to load {f}: torch.load(weights_only=True) rejected its content: {message}"
        )
    return ValueError(f"Cannot read checkpoint {f}: it is corrupt or not a PyTorch checkpoint")


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
