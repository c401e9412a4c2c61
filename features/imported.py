"""Bring your own features and keypoints: read per-video arrays made by other tools.

Features ([T, D]) come from two sources:

``read_feature_dir(folder)``
    One ``<id>.npy`` file per video, each a [T, D] array (read with ``allow_pickle=False``).

``read_slrt_features(path)``
    The feature files of SLRT (github.com/FangyunWei/SLRT, TwoStreamNetwork's
    ``extract_feature.py``): a gzip-compressed pickle of a list of dicts, one per video, with
    ``name`` (e.g. ``train/01April_2010_Thursday_heute-6694``: SLRT's names carry the split as a
    folder), ``sign`` (the [T, D] features, a CPU ``torch.Tensor`` as SLRT writes them, or a
    numpy array) and SLRT's annotation keys (``gloss``, ``text``, ``num_frames``), which are not
    used here. A plain (not gzipped) pickle and a dict of such entries are read too.

Keypoints ([T, 133, 3]) come from SLRT's keypoint files (:func:`read_slrt_keypoints`) or a folder
of ``<id>.npy``; ``.pose`` files are read in :mod:`cslr_pipe.features.pose.pose_format`.

Security: these files are pickles, and ``pickle.load`` runs whatever callables a file names.
:class:`RestrictedUnpickler` resolves only the globals that array reconstruction needs and refuses
every other one with :class:`UnsafePickleError` *before* anything is called:

- numpy arrays: ``numpy.core.multiarray._reconstruct`` (numpy 1.x name) or
  ``numpy._core.multiarray._reconstruct`` (numpy 2), ``numpy.ndarray`` and ``numpy.dtype``;
  ``numpy[._]core.numeric._frombuffer`` for arrays pickled with protocol 5;
  ``numpy[._]core.multiarray.scalar`` for numpy scalars (e.g. a ``num_frames`` of type int64);
  ``_codecs.encode``, which pickle protocol 2 uses for bytes, only with the ``latin1`` codec;
- torch tensors (pickled with plain ``pickle``): ``torch._utils._rebuild_tensor_v2``,
  ``torch.storage._load_from_bytes`` and ``collections.OrderedDict`` (the tensor's empty
  backward-hook dict). Torch's own ``_load_from_bytes`` calls torch.load with ``weights_only=False``
  on the embedded storage bytes, a second unrestricted unpickler; it is replaced here by a loader
  that calls ``torch.load(..., weights_only=True, map_location="cpu")``, and the tensor rebuild
  accepts only the storage that loader made, with no backward hooks.

Object arrays are refused too (their elements would be arbitrary pickled objects), so a file
yields nothing but strings, numbers, lists, dicts and numeric arrays.
"""

from __future__ import annotations

import collections
import gzip
import io
import pickle
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cslr_pipe.features.errors import InputError

SPLIT_PREFIXES = ("train/", "dev/", "test/", "val/")


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle that names something other than array reconstruction; nothing of it was run."""


class FeatureFileError(InputError):
    """A feature file that cannot be used at all (unreadable, or not in the expected layout)."""


# ---------------------------------------------------------------------------------------------
# The restricted unpickler


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:  # only plain arrays, never a subclass with its own __setstate__
        raise UnsafePickleError(f"array subtype {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


try:  # numpy 2 moved the private modules to numpy._core
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return _np_scalar(dtype, data) if data is not None else _np_scalar(dtype)


def _frombuffer(buffer, dtype, shape, order):
    """numpy's pickle-protocol-5 array constructor, for plain numeric arrays only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"array of dtype {dtype!r} is not allowed")
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise UnsafePickleError("array data must be bytes")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"array order {order!r} is not allowed")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy(order="K")


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin1", errors)


def _load_storage(data):
    """torch.storage._load_from_bytes without its nested unrestricted unpickler."""
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("tensor storage must be bytes")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:  # torch's message advises weights_only=False: not shown
        detail = next((line.strip() for line in str(error).splitlines()
                       if "global" in line.lower() and "weights_only" not in line), "not a plain storage")
        raise UnsafePickleError(f"tensor storage refused by torch.load(weights_only=True): "
                                f"{detail[:200]}") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"tensor storage is a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    import torch
    from torch._utils import _rebuild_tensor_v2

    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError("a tensor must be rebuilt from a storage")
    if backward_hooks:
        raise UnsafePickleError("tensors with backward hooks are not allowed")
    if metadata:
        raise UnsafePickleError("tensors with Python attributes are not allowed")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and all(isinstance(v, int) for v in (*size, *stride))):
        raise UnsafePickleError("malformed tensor layout")
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                              collections.OrderedDict())


def _ordered_dict(*args):
    if args:  # only the empty backward-hook dict of a tensor
        raise UnsafePickleError("only an empty collections.OrderedDict is allowed")
    return collections.OrderedDict()


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): _ordered_dict,
}
"""(module, name) -> what the unpickler gets instead. Everything else raises UnsafePickleError."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that reconstructs numpy arrays and torch tensors and nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: feature pickles may only contain numpy arrays "
                f"and torch tensors (see cslr_pipe.features.imported)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed in feature pickles")


def restricted_load(handle) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`; object arrays are refused too."""
    data = RestrictedUnpickler(handle).load()
    _refuse_object_arrays(data)
    return data


def _refuse_object_arrays(data, depth: int = 0) -> None:
    if depth > 50:
        raise UnsafePickleError("feature pickle is nested too deeply")
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise UnsafePickleError("object arrays are not allowed in feature pickles")
    elif isinstance(data, dict):
        for value in data.values():
            _refuse_object_arrays(value, depth + 1)
    elif isinstance(data, (list, tuple)):
        for value in data:
            _refuse_object_arrays(value, depth + 1)


# ---------------------------------------------------------------------------------------------
# Readers


def slrt_name_to_id(name: str) -> str:
    """A video id from an SLRT name: the leading split folder (``train/`` ...) is dropped."""
    for prefix in SPLIT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def to_numpy(value: Any) -> np.ndarray:
    """A feature value (numpy array or torch tensor) as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value = value.float()
            return value.numpy()
    return np.asarray(value)


def check_features(array: np.ndarray) -> str | None:
    """Why ``array`` cannot be stored as [T, D] features, or None when it can."""
    if not isinstance(array, np.ndarray):
        return f"features are a {type(array).__name__}, not an array"
    if array.dtype.kind not in "fiub":
        return f"features have dtype {array.dtype}, not a numeric type"
    if array.ndim != 2:
        return f"features must be 2-D [T, D], got shape {list(array.shape)}"
    if array.shape[0] == 0 or array.shape[1] == 0:
        return f"features are empty (shape {list(array.shape)})"
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        return f"features contain NaN or infinite values ({bad} of {array.shape[0]} time steps)"
    return None


def list_feature_dir(folder: str | Path) -> dict[str, Path]:
    """id -> ``<id>.npy`` file of a feature folder, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatureFileError(f"{folder}: no such feature folder")
    return {path.stem: path for path in sorted(folder.glob("*.npy")) if path.is_file()}


def load_npy(path: str | Path) -> np.ndarray:
    """One ``.npy`` feature file; never unpickles (object arrays raise FeatureFileError)."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise FeatureFileError(f"{Path(path).name}: cannot read ({' '.join(str(error).split())})") from None


def read_feature_dir(folder: str | Path,
                     errors: dict[str, str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (id, array) for every ``<id>.npy`` in ``folder``, in id order.

    A file that cannot be read raises FeatureFileError, or, when ``errors`` is given, is
    recorded there (id -> reason) and skipped.
    """
    for video_id, path in list_feature_dir(folder).items():
        try:
            array = load_npy(path)
        except FeatureFileError as error:
            if errors is None:
                raise
            errors[video_id] = str(error)
            continue
        yield video_id, array


def load_restricted_pickle(path: str | Path) -> Any:
    """A gzip or plain pickle, through the restricted loader; one-line errors naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such file")
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as handle:
            return restricted_load(handle)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error} (nothing in the file was run)") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RuntimeError) as error:
        raise FeatureFileError(f"{path}: not a readable pickle "
                               f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None


def load_slrt_file(path: str | Path) -> list[dict]:
    """The entries of an SLRT feature file (gzip or plain pickle), through the restricted loader."""
    data = load_restricted_pickle(path)
    if isinstance(data, dict):
        if "name" in data and "sign" in data:
            data = [data]
        else:  # name -> entry
            data = [entry if isinstance(entry, dict) and "name" in entry else {"name": key, "sign": entry}
                    for key, entry in data.items()]
    if not isinstance(data, (list, tuple)):
        raise FeatureFileError(f"{path}: expected a list of dicts with 'name' and 'sign', "
                               f"got a {type(data).__name__}")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or "name" not in entry or "sign" not in entry:
            raise FeatureFileError(f"{path}: entry {index} is not a dict with 'name' and 'sign'")
        if not isinstance(entry["name"], str):
            raise FeatureFileError(f"{path}: entry {index} has a name of type "
                                   f"{type(entry['name']).__name__}, not str")
    return list(data)


def read_slrt_features(path: str | Path, name_to_id: Callable[[str], str] = slrt_name_to_id
                       ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (id, features) from an SLRT feature file, in file order.

    Ids come from ``name_to_id(entry["name"])`` (by default the name without its split folder);
    torch tensors are converted to numpy arrays, values are not checked (see check_features).
    """
    for entry in load_slrt_file(path):
        yield name_to_id(entry["name"]), to_numpy(entry["sign"])


# ---------------------------------------------------------------------------------------------
# Keypoints: SLRT's keypoint files and folders of .npy


def check_keypoints(array: np.ndarray, points: int = 133) -> str | None:
    """Why ``array`` cannot be stored as keypoints [T, points, 3] (x, y, score), or None when it can."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        return f"keypoints are a {type(array).__name__} of {getattr(array, 'dtype', '?')}, not numbers"
    if array.ndim != 3 or array.shape[1:] != (points, 3) or array.shape[0] == 0:
        return f"keypoints must be [T, {points}, 3] (x, y, score), got shape {list(array.shape)}"
    if not np.isfinite(array).all():
        return f"keypoints contain NaN or infinite values ({int((~np.isfinite(array)).any(axis=(1, 2)).sum())} frames)"
    return None


def read_slrt_keypoints(path: str | Path, name_to_id: Callable[[str], str] = slrt_name_to_id
                        ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (id, keypoints) from an SLRT keypoint file (``keypoint_file`` in SLRT's configs):
    a pickle of a dict from the video name to its HRNet whole-body keypoints [T, 133, 3] in frame
    pixels, or to ``{"keypoints": that array}`` (both layouts occur in SLRT's loaders). Read through
    the restricted unpickler; values are not checked (see :func:`check_keypoints`)."""
    data = load_restricted_pickle(path)
    if not isinstance(data, dict):
        raise FeatureFileError(f"{path}: expected a dict from video name to keypoints, got a {type(data).__name__}")
    for name, value in data.items():
        if not isinstance(name, str):
            raise FeatureFileError(f"{path}: a key of type {type(name).__name__}, not a video name")
        if isinstance(value, dict):
            if "keypoints" not in value:
                raise FeatureFileError(f"{path}: {name} has no 'keypoints' (keys: {', '.join(map(str, value))})")
            value = value["keypoints"]
        yield name_to_id(name), to_numpy(value)


def write_slrt_keypoints(path: str | Path, keypoints: dict[str, np.ndarray]) -> Path:
    """Write ``{name: [T, 133, 3]}`` as SLRT's loaders read it (a plain pickle of a dict of float32
    arrays), atomically; names are written as given (SLRT's carry the split: ``train/<id>``)."""
    from cslr_pipe.features.files import atomic_write_bytes

    data = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in keypoints.items()}
    atomic_write_bytes(path, pickle.dumps(data, protocol=4))
    return Path(path)
