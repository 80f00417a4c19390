"""Read ``.pkl`` files (checkpoints, precomputed proposals) without running code from them.

``pickle.load`` calls whatever global a file names, so a crafted ``.pkl`` can run
``os.system`` on load. Detectron2's model-zoo files (and Detectron1/Caffe2 ones, which are
Python 2 pickles) hold only nested containers of numbers, strings and numpy arrays, so this
module's unpickler resolves exactly the globals those need and refuses every other one
before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import contextlib
import io
import os
import pickle
from typing import IO, Any

import numpy as np
import torch

from heron.utils.file_io import PathManager

__all__ = [
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_pickle",
    "torch_numpy_safe_globals",
]

# numpy moved its pickle helpers from ``numpy.core`` to ``numpy._core`` in 2.0; files name
# either module depending on the numpy that wrote them. Take the objects from numpy's own
# __reduce__ so both spellings resolve to the functions of the numpy installed here.
_NP_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 rebuilds arrays from a buffer

# Text encodings that CPython's pickler uses for ``bytes`` under protocols 0-2.
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` that accepts only the latin-1 codec.

    Python 3 pickles ``bytes`` under protocol <= 2 as ``_codecs.encode(text, "latin1")``
    (numpy arrays included); no legitimate file asks for another codec.
    """
    try:
        codec_name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        codec_name = None
    if not isinstance(text, str) or codec_name not in _LATIN1_NAMES:
        raise UnsafePickleError(
            f"_codecs.encode with encoding {encoding!r} on a {type(text).__name__} is not "
            "allowed; only latin-1 text, which pickles use for bytes, is"
        )
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        ("builtins", t.__name__): t
        for t in (
            dict,
            list,
            tuple,
            set,
            frozenset,
            int,
            float,
            complex,
            bool,
            str,
            bytes,
            bytearray,
        )
    },
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode_latin1,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global (function or class) outside the allowed set."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only containers, numbers, strings and numpy arrays.

    Args:
        file: a binary file object positioned at the pickle.
        filename: the name used in error messages.
        encoding: how Python 2 ``str`` objects are decoded; "latin1" keeps numpy array
            buffers written by Python 2 (Caffe2, Detectron1) byte-exact.
    """

    def __init__(self, file: IO[bytes], *, filename: str = "<stream>", encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed object named ``module.name``; raise for anything else."""
        requested = f"{module}.{name}"
        # Python 2 pickles say "__builtin__.unicode" etc.; map them as CPython's
        # fix_imports does before deciding, so the check sees Python 3 names (the tables
        # have no Python 3 names as keys, so Python 3 pickles pass through unchanged).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"Refusing to load {self.filename}: it references the global {requested!r}, "
                "and only containers, numbers, strings and numpy arrays are allowed in .pkl "
                "checkpoints. Load it with pickle only if you trust its source."
            )
        return obj


def load_pickle(file_or_path: str | os.PathLike | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Load a pickle that may hold only containers, numbers, strings and numpy arrays.

    Args:
        file_or_path: a path or URL (opened through ``PathManager``) or a binary file
            object.
        encoding: decoding of Python 2 ``str`` objects, "latin1" as for Caffe2 pickles.

    Returns:
        The unpickled object.

    Raises:
        UnsafePickleError: the pickle names any other global (``os.system``,
            ``builtins.eval``, torch classes, user classes); nothing from it has run.
        ValueError: the data is empty, truncated or not a pickle (names the file).
        FileNotFoundError: the path does not exist.
    """
    if isinstance(file_or_path, (str, os.PathLike)):
        filename = os.fspath(file_or_path)
        with PathManager.open(filename, "rb") as f:
            return _load_from_file(f, filename, encoding)
    filename = str(getattr(file_or_path, "name", repr(file_or_path)))
    return _load_from_file(file_or_path, filename, encoding)


def _load_from_file(f: IO[bytes], filename: str, encoding: str) -> Any:
    try:
        return RestrictedUnpickler(f, filename=filename, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        io.UnsupportedOperation,
    ) as e:
        # Corrupt bytes surface as almost any of these from inside the unpickler.
        raise ValueError(
            f"Cannot read {filename}: it is empty, truncated or not a pickle file "
            f"({type(e).__name__}: {e})"
        ) from e


def torch_numpy_safe_globals() -> Any:
    """A context in which ``torch.load(weights_only=True)`` accepts numpy arrays too."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: arrays in .pth files are refused
        return contextlib.nullcontext()
    # torch checks the class of each object it BUILDs; numpy >= 1.25 dtypes have one
    # class per kind (numpy.dtypes.Float32DType ...)
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    return safe_globals(
        [
            *sorted(dtype_classes, key=lambda c: c.__name__),
            np.ndarray,
            np.dtype,
            (_NP_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
            (_NP_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
            (_NP_SCALAR, "numpy.core.multiarray.scalar"),
            (_NP_SCALAR, "numpy._core.multiarray.scalar"),
        ]
    )
